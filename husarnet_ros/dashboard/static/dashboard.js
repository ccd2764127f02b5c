// The Dashboard's only script (served by the Dashboard itself; the pages work without it, minus live updates
// and confirmations).
//  - An element with data-live="URL" is replaced with the HTML fragment at URL every data-refresh-ms
//    milliseconds, except while the user is in a control inside it (that would lose what they typed). A 401,
//    403 or 404 answer stops the updates and shows the fragment's message: the session ended or the network
//    is no longer visible.
//  - A form with data-confirm="QUESTION" is submitted only if the user confirms.
"use strict";
(function () {
  const STOP = new Set([401, 403, 404]);

  function follow(element) {
    const url = element.dataset.live;
    const every = Number(element.dataset.refreshMs) || 2500;
    let shown = null; // the last fragment put in: an unchanged one is not put in again (no flicker, no re-announce)
    async function tick() {
      if (!element.contains(document.activeElement)) {
        try {
          const response = await fetch(url, { credentials: "same-origin", cache: "no-store", redirect: "error" });
          const text = await response.text();
          if (response.ok) {
            if (text !== shown) {
              element.innerHTML = text;
              shown = text;
            }
            element.dataset.updated = String(Date.now());
          } else if (STOP.has(response.status)) {
            element.insertAdjacentHTML("afterbegin", text);
            return;
          }
        } catch (error) {
          // The Dashboard did not answer this time: keep what is shown and try again.
        }
      }
      window.setTimeout(tick, every);
    }
    window.setTimeout(tick, every);
  }

  document.querySelectorAll("[data-live]").forEach(follow);
  document.addEventListener("submit", function (event) {
    const question = event.target.dataset ? event.target.dataset.confirm : undefined;
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });
})();
