// Live updates for the open console page (docs/contract.md §3.5), our own code.
// A page whose <body> carries data-live="<idempotency key>" or "all" subscribes to
// /console/stream; each status change re-renders the page's <main> from the server
// (the page stays what the server renders). If the stream drops, poll every 2 s
// until it is back.
(function () {
  "use strict";
  var scope = document.body.dataset.live;
  if (!scope) { return; }
  var state = document.getElementById("live-state");
  var pollTimer = null;
  var refreshing = false;
  var again = false;

  function say(text) { if (state) { state.textContent = text; } }

  function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        var main = document.getElementById("live");
        if (fresh && main) { main.innerHTML = fresh.innerHTML; }
      })
      .catch(function () { /* the next change or poll tries again */ })
      .finally(function () {
        refreshing = false;
        if (again) { again = false; refresh(); }
      });
  }

  function poll(on) {
    if (on && pollTimer === null) { pollTimer = window.setInterval(refresh, 2000); say("live: polling"); }
    if (!on && pollTimer !== null) { window.clearInterval(pollTimer); pollTimer = null; }
  }

  if (!window.EventSource) { poll(true); return; }
  var source = new EventSource("/console/stream?key=" + encodeURIComponent(scope));
  // A change made between the page's render and the stream's start would be
  // missed: catch up once each time the stream (re)opens.
  source.addEventListener("open", function () { poll(false); say("live"); refresh(); });
  source.addEventListener("error", function () { poll(true); });
  source.addEventListener("resync", refresh);
  source.addEventListener("status", function (message) {
    var change = JSON.parse(message.data);
    var badge = document.getElementById("event-status");
    if (badge && change.idempotency_key === scope) {
      badge.textContent = change.status;
      badge.className = "status " + change.status;
    }
    // Kept for the browser test's latency figures (worker's clock → this page).
    var seen = window.gatewayChanges = window.gatewayChanges || [];
    if (seen.length < 10000) { seen.push({ received: Date.now(), change: change }); }
    refresh();
  });
})();
