// The live pair of a longer conversation: each answer's pieces are appended to its pane as the server sends them
// (server-sent events from annotate/turns/streaming.py). When the pair is stored the page fetches it to vote on.
// A stream that is refused (the process is busy) or breaks falls back to asking the page every 3 seconds; without
// JavaScript the page's "Check now" link does the same.
let source = null;
let poll = null;

function annotateAgain(url) {
  window.htmx.ajax("GET", url, { target: "#pair", swap: "outerHTML", select: "#pair" });
}

function stopWatching() {
  if (source) source.close();
  source = null;
  if (poll) clearInterval(poll);
  poll = null;
}

function watch() {
  const box = document.querySelector("#pair [data-stream-url]");
  stopWatching();
  if (!box) return;
  const status = box.querySelector("[data-testid=stream-status]");
  const pollPage = () => {
    if (!poll) poll = setInterval(() => annotateAgain(box.dataset.annotateUrl), 3000);
  };
  source = new EventSource(box.dataset.streamUrl);
  source.addEventListener("text", (event) => {
    const data = JSON.parse(event.data);
    const pane = box.querySelector(`.streaming[data-side="${data.side}"]`);
    if (pane) pane.append(document.createTextNode(data.text)); // text, never HTML: model output is hostile
  });
  source.addEventListener("ready", () => {
    stopWatching();
    annotateAgain(box.dataset.annotateUrl);
  });
  source.addEventListener("failed", (event) => {
    stopWatching();
    if (status) status.textContent = JSON.parse(event.data).message;
  });
  for (const name of ["waiting", "busy"]) {
    source.addEventListener(name, () => {
      source.close();
      pollPage();
    });
  }
  source.addEventListener("error", () => {
    // Cut (a web process restarted, a proxy gave up): never reconnect blindly, ask the page instead.
    if (source && source.readyState !== EventSource.OPEN) {
      source.close();
      pollPage();
    }
  });
}

document.addEventListener("DOMContentLoaded", watch);
document.addEventListener("htmx:afterSettle", (event) => {
  if (event.target && event.target.id === "pair") watch();
});
