// The annotate page's keys and what htmx swaps leave behind. Every key acts on the element that carries it in
// data-key: a button is clicked, a strength radio is chosen, the rationale box is focused, the guidelines toggle.
const pair = () => document.getElementById("pair");

function strengthChosen(form) {
  return form.querySelector("input[name=strength]:checked") !== null;
}

// A side wins only with a strength: say so on the page instead of sending a vote the server would refuse.
// No strength is chosen in advance, so that none is given by default (a preselected option draws votes to itself).
document.addEventListener("click", (event) => {
  const button = event.target instanceof Element ? event.target.closest("button[data-needs-strength]") : null;
  if (!button || strengthChosen(button.form)) return;
  event.preventDefault();
  const note = button.form.querySelector("[data-testid=strength-needed]");
  if (note) note.hidden = false;
  button.form.querySelector("input[name=strength]").focus();
});

document.addEventListener("change", (event) => {
  if (event.target instanceof HTMLInputElement && event.target.name === "strength") {
    const note = event.target.form.querySelector("[data-testid=strength-needed]");
    if (note) note.hidden = true;
  }
});

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.target;
  const typing = target instanceof HTMLElement && (target.isContentEditable || target.tagName === "TEXTAREA" || target.tagName === "SELECT" || (target.tagName === "INPUT" && target.type !== "radio"));
  if (typing) {
    if (event.key === "Escape") target.blur(); // back to the keys
    return;
  }
  const section = pair();
  const element = section && section.querySelector(`[data-key="${CSS.escape(event.key.toLowerCase())}"]`);
  if (!element || element.disabled) return;
  event.preventDefault();
  if (element.tagName === "TEXTAREA") {
    element.focus();
  } else if (element.tagName === "INPUT") {
    element.checked = true;
    element.focus();
    element.dispatchEvent(new Event("change", { bubbles: true }));
  } else {
    element.click();
  }
});

// The guidelines stay as the annotator left them from one pair to the next of the same campaign (the server opens
// them itself on a first sight and after a change).
let guidelinesOpen = null;
document.addEventListener("htmx:beforeSwap", () => {
  const details = document.querySelector("#pair details.guidelines");
  guidelinesOpen = details ? { campaign: details.dataset.campaign, open: details.open } : null;
});

document.addEventListener("htmx:afterSwap", (event) => {
  const details = document.querySelector("#pair details.guidelines");
  if (details && guidelinesOpen && guidelinesOpen.campaign === details.dataset.campaign && guidelinesOpen.open) {
    details.open = true;
  }
  // After a vote, a skip or an undo the new pair starts at its top, not where the last one was scrolled to (the
  // waiting page's polling, a GET, leaves the page where the annotator put it).
  if (event.detail.requestConfig && event.detail.requestConfig.verb === "post") window.scrollTo({ top: 0 });
});
