// Writing a better answer on the annotate page (templates/annotate/_edit.html). Without this script the box still
// opens (it is a <details>) and what is typed is sent with the vote; with it, opening the box (D) focuses it, and
// "start from" (Z left, X right) copies that answer's text in and says which one it was.
document.addEventListener(
  "toggle",
  (event) => {
    const details = event.target;
    if (!(details instanceof HTMLDetailsElement) || !details.classList.contains("edit-answer")) return;
    details.querySelector(".edit-from").hidden = false;
    // No focus here: "toggle" fires a task after the box opened, and by then the annotator may have pressed Esc to
    // leave it; focusing it again would send the next vote key into the box as text. The click handlers below focus.
  },
  true, // toggle does not bubble
);

// The box opens (D, or a click on its title) with the cursor in it at once, not a task later when "toggle" fires:
// keys typed straight after D go into the box, never to the vote keys.
document.addEventListener("click", (event) => {
  const summary = event.target instanceof Element ? event.target.closest("details.edit-answer > summary") : null;
  if (!summary) return;
  event.preventDefault();
  const details = summary.parentElement;
  details.open = !details.open;
  details.querySelector(".edit-from").hidden = false;
  if (details.open) details.querySelector("textarea[name=edit]").focus();
});

document.addEventListener("click", (event) => {
  const button = event.target instanceof Element ? event.target.closest("button[data-edit-from]") : null;
  if (!button) return;
  const details = button.closest("details.edit-answer");
  const side = button.dataset.editFrom;
  const source = side === "top" ? rankedFirst(details) : document.getElementById(`edit-source-${side}`);
  const note = details && details.querySelector("[data-edit-from-note]");
  if (note) note.hidden = source !== null;
  if (!details || !source) return;
  const textarea = details.querySelector("textarea[name=edit]");
  textarea.value = JSON.parse(source.textContent);
  // On a ranking the server starts from the answer ranked 1 itself: it sends no side.
  details.querySelector("input[name=edit_from]").value = side === "top" ? "" : side;
  details.querySelector(".edit-from").hidden = false;
  details.open = true;
  textarea.focus();
});

// On a ranking pair (templates/annotate/_rank.html): the text of the one answer ranked 1 so far, or null when none
// is, or several share the first place.
function rankedFirst(details) {
  const form = details && details.closest("form");
  const first = form ? [...form.querySelectorAll(".rank-answer input[type=radio][value='1']:checked")] : [];
  if (first.length !== 1) return null;
  return document.getElementById(`edit-source-place-${first[0].name.slice("rank_".length)}`);
}
