// fogswarm dashboard: live updates without a reload. The server sends a
// Server-Sent Event for every change in its event log; the page then
// fetches its own main part again and swaps it in (unless someone is
// typing in a form on it).
(function () {
  "use strict";
  var main = document.getElementById("main");
  var live = document.getElementById("live");
  if (!main || !window.EventSource) { return; }
  var pending = null;
  function busy() {
    var a = document.activeElement;
    return a && (a.tagName === "TEXTAREA" || a.tagName === "INPUT") && a.form && a.form.dataset.keep === "1";
  }
  function refresh() {
    pending = null;
    if (busy()) { pending = setTimeout(refresh, 1000); return; }
    fetch(location.href, { headers: { "X-Fogswarm-Fragment": "1" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) { main.innerHTML = html; })
      .catch(function () {});
  }
  var source = new EventSource("/live");
  source.addEventListener("change", function (e) {
    if (live) {
      try {
        var ev = JSON.parse(e.data);
        if (ev.id) { live.textContent = "live: " + ev.action + " " + ev.subject; }
      } catch (_) {}
    }
    if (!pending) { pending = setTimeout(refresh, 250); }
  });
  source.onopen = function () { if (live) { live.textContent = "live"; } };
  source.onerror = function () { if (live) { live.textContent = "reconnecting"; } };
})();
