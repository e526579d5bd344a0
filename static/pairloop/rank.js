// Ranking K answers (templates/annotate/_rank.html) by the keyboard: a number places that answer next (rank 1, then
// 2, ...); T makes the next number share the last answer's place (a tie); X clears; Enter saves. The rank radios the
// page shows are what is sent, so the mouse (and a browser without JavaScript) ranks with them directly.
(() => {
  const form = () => document.querySelector("#pair form.rank-form");
  let tieNext = false;

  function ranks(current) {
    return [...current.querySelectorAll(".rank-answer")].map((answer) => {
      const checked = answer.querySelector("input[type=radio]:checked");
      return checked ? Number(checked.value) : null;
    });
  }

  function describe(current) {
    const given = ranks(current);
    const note = current.querySelector("[data-testid=rank-order]");
    const levels = new Map();
    given.forEach((rank, place) => {
      if (rank !== null) levels.set(rank, [...(levels.get(rank) || []), place + 1]);
    });
    const order = [...levels.keys()].sort((a, b) => a - b).map((rank) => levels.get(rank).join(" = ")).join(" > ");
    const missing = given.filter((rank) => rank === null).length;
    const tie = tieNext ? " · the next answer ties with the last" : "";
    note.textContent = order
      ? `Your order: ${order}${missing ? ` · ${missing} still to place` : " · Enter saves it"}${tie}`
      : `Press an answer's number to place it next${tie}.`;
    current.querySelector("[data-rank-tie]").setAttribute("aria-pressed", String(tieNext));
  }

  function place(current, number) {
    const answers = current.querySelectorAll(".rank-answer");
    const answer = answers[number - 1];
    if (!answer) return;
    answer.querySelectorAll("input[type=radio]").forEach((input) => { input.checked = false; });
    const others = ranks(current).filter((rank) => rank !== null);
    const last = others.length ? Math.max(...others) : 0;
    const rank = Math.min(answers.length, Math.max(1, tieNext ? last : last + 1));
    answer.querySelector(`input[type=radio][value="${rank}"]`).checked = true;
    tieNext = false;
    describe(current);
  }

  function prepare() {
    const current = form();
    if (!current || current.dataset.ready) return;
    current.dataset.ready = "1";
    tieNext = false;
    current.querySelectorAll("[data-rank-tie], [data-rank-clear]").forEach((button) => { button.hidden = false; });
    describe(current);
  }

  document.addEventListener("DOMContentLoaded", prepare);
  document.addEventListener("htmx:afterSwap", prepare);

  document.addEventListener("click", (event) => {
    const current = form();
    const button = current && event.target instanceof Element ? event.target.closest("button") : null;
    if (!button || !current.contains(button)) return;
    if (button.hasAttribute("data-rank-tie")) {
      tieNext = !tieNext;
      describe(current);
    } else if (button.hasAttribute("data-rank-clear")) {
      current.querySelectorAll(".rank-answer input[type=radio]").forEach((input) => { input.checked = false; });
      tieNext = false;
      describe(current);
    }
  });

  document.addEventListener("change", (event) => {
    const current = form();
    if (current && event.target instanceof HTMLInputElement && current.contains(event.target)) describe(current);
  });

  document.addEventListener("keydown", (event) => {
    const current = form();
    if (!current || event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target instanceof HTMLElement && (target.isContentEditable || target.tagName === "TEXTAREA")) return;
    const number = Number(event.key);
    if (Number.isInteger(number) && number >= 1 && number <= current.querySelectorAll(".rank-answer").length) {
      event.preventDefault();
      place(current, number);
    }
  });
})();
