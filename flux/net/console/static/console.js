// The Flux console's only script: live regions, local times, JSON checks and confirmations.
// No inline handlers anywhere (the pages' Content-Security-Policy forbids them): everything is
// wired here from data- attributes.
//
//   data-poll="URL" data-every="MS"  refetch URL and swap the element for the answer's element of
//                                    the same id; stops once the answer has no data-poll (settled)
//   data-confirm="TEXT"              a form asks before it is sent
//   data-json="FIELD"                a form checks that FIELD holds valid JSON before it is sent
//   <time datetime="ISO">            shown in the browser's local time zone
"use strict";

(function () {
  const pad = (n) => String(n).padStart(2, "0");

  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach((el) => {
      const d = new Date(el.getAttribute("datetime"));
      if (isNaN(d)) return;
      el.title = el.getAttribute("datetime");
      el.textContent =
        `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
        `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    });
  }

  // one poller per live element id; a swapped-in element starts its own
  const pollers = new Map();

  function poll(el) {
    const id = el.id;
    if (!id || pollers.has(id)) return;
    const every = Math.max(parseInt(el.dataset.every || "2000", 10), 250);
    let failures = 0;
    const tick = async () => {
      const current = document.getElementById(id);
      if (!current || !current.dataset.poll) {
        pollers.delete(id);
        return;
      }
      if (document.hidden) {
        pollers.set(id, setTimeout(tick, every));
        return;
      }
      try {
        const res = await fetch(current.dataset.poll, {
          credentials: "same-origin",
          headers: { Accept: "text/html" },
        });
        if (res.redirected || res.status === 401) {
          window.location.reload();
          return;
        }
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        const doc = new DOMParser().parseFromString(await res.text(), "text/html");
        const fresh = doc.getElementById(id);
        failures = 0;
        document.body.classList.remove("offline");
        if (fresh && fresh.innerHTML !== current.innerHTML) {
          const open = current.querySelectorAll("details[open]").length > 0;
          if (!open) {
            const adopted = document.importNode(fresh, true);
            current.replaceWith(adopted);
            localTimes(adopted);
            if (!adopted.dataset.poll) {
              pollers.delete(id);
              document.dispatchEvent(new CustomEvent("flux:settled", { detail: id }));
              return;
            }
          }
        } else if (fresh && !fresh.dataset.poll) {
          current.removeAttribute("data-poll");
          pollers.delete(id);
          return;
        }
      } catch (err) {
        failures += 1;
        document.body.classList.add("offline");
      }
      // back off while the server is away, up to 30 s
      const wait = failures ? Math.min(every * 2 ** failures, 30000) : every;
      pollers.set(id, setTimeout(tick, wait));
    };
    pollers.set(id, setTimeout(tick, every));
  }

  function checkJson(form) {
    const field = form.elements[form.dataset.json];
    if (!field) return true;
    const box = form.querySelector(".json-error");
    const text = field.value.trim();
    try {
      if (text) JSON.parse(text);
      field.setCustomValidity("");
      if (box) box.hidden = true;
      return true;
    } catch (err) {
      const message = `Not valid JSON: ${err.message}`;
      field.setCustomValidity(message);
      if (box) {
        box.textContent = message;
        box.hidden = false;
      }
      field.reportValidity();
      return false;
    }
  }

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form.dataset.json && !checkJson(form)) {
      event.preventDefault();
      return;
    }
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
      return;
    }
    form.querySelectorAll("button[type=submit]").forEach((b) => {
      b.disabled = true; // one click, one action
    });
  });

  document.addEventListener("input", (event) => {
    const form = event.target.form;
    if (!form || form.dataset.json !== event.target.name) return;
    event.target.setCustomValidity("");
    const box = form.querySelector(".json-error");
    if (box) box.hidden = true;
  });

  function start() {
    localTimes(document);
    document.querySelectorAll("[data-poll]").forEach(poll);
    document.documentElement.dataset.ready = "1";
    if (window.performance && performance.mark) performance.mark("flux:ready"); // bench/console.py
  }

  document.addEventListener("flux:settled", (event) => {
    // the execution settled: the actions above the live region are stale, show the final page
    // (other regions, e.g. the logs panel, stop polling for their own reasons)
    if (event.detail !== "live") return;
    if (document.querySelector(".actions form")) window.location.reload();
  });

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
