// Study page: show new results without a reload. Polls the study's progress (a small JSON
// answer) while something is under way; when its version changes, fetches the series
// part of the page as the server renders it and swaps it in. No framework, no build.
"use strict";
(function () {
  const root = document.getElementById("live");
  if (!root) return;
  const status = document.getElementById("live-status");
  const every = 1500; // ms between looks
  const until = Date.now() + 30 * 60 * 1000; // a page left open stops asking after 30 min

  async function refresh() {
    const answer = await fetch(root.dataset.fragment, { credentials: "same-origin" });
    if (!answer.ok) return false;
    const doc = new DOMParser().parseFromString(await answer.text(), "text/html");
    root.replaceChildren(...doc.body.childNodes);
    return true;
  }

  async function look() {
    let pending = true;
    try {
      const answer = await fetch(root.dataset.progress, {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      if (answer.status === 401 || answer.status === 403 || answer.status === 404) return;
      if (answer.ok) {
        const progress = await answer.json();
        if (progress.version !== root.dataset.version && (await refresh())) {
          root.dataset.version = progress.version;
        }
        pending = progress.pending;
      }
    } catch (error) {
      // the node restarting, a network hiccup: look again later
    }
    if (status) status.textContent = pending ? "Processing: this page shows the result when it is there." : "";
    if (pending && Date.now() < until) setTimeout(look, every);
  }

  if (root.dataset.pending === "yes") setTimeout(look, every);
})();
