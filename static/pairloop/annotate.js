// Keyboard shortcuts for the annotate page: each key clicks the button that carries it in data-key.
document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.target;
  if (target instanceof HTMLElement && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName))) {
    if (target.type !== "radio") return;
  }
  const button = document.querySelector(`#pair button[data-key="${event.key.toLowerCase()}"]`);
  if (button && !button.disabled) {
    event.preventDefault();
    button.click();
  }
});
