// The overview's live refresh (issue 18): our own ~30 lines, no library, no CDN, no build step.
// Why not a framework (htmx and the like): all we need is "fetch a fragment every few seconds and
// replace a div", which fetch() does; a vendored library would be code to audit and update for
// nothing, and this file works offline, under the page's Content-Security-Policy (script-src 'self').
(function () {
  "use strict";
  var box = document.getElementById("overview");
  if (!box) { return; }
  var seconds = parseFloat(box.getAttribute("data-refresh")) || 5;
  var source = box.getAttribute("data-source") || "/console/overview.part";
  var busy = false;
  function refresh() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch(source, {credentials: "same-origin", headers: {"Accept": "text/html"}, redirect: "manual"})
      .then(function (response) {
        if (response.status !== 200) {
          // Signed out (303 to the sign-in page) or an error: say so instead of showing stale figures.
          box.setAttribute("data-stale", "yes");
          return null;
        }
        return response.text();
      })
      .then(function (html) {
        if (html !== null) {
          // The fragment is made by the server's templates with autoescaping, like the page itself.
          box.innerHTML = html;
          box.removeAttribute("data-stale");
        }
      })
      .catch(function () { box.setAttribute("data-stale", "yes"); })
      .then(function () { busy = false; });
  }
  window.setInterval(refresh, seconds * 1000);
}());
