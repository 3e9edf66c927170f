// The page's keys and its presentation view; loaded in the page's <head>.
//
// Keys (ignored while typing in a field): R records and stops, C clears, P switches the
// presentation view on and off, F puts it full screen, T swaps light and dark. The keys click
// the page's own buttons, as a person would, so every handler runs as usual.
//
// The presentation view (?view=captions, or the "Presentation view" button) shows the
// captions alone, large and high-contrast, on the same page: the recording goes on
// underneath, and R still starts and stops it.
(() => {
  const root = document.documentElement;
  const params = new URLSearchParams(location.search);
  const named = (scope, name) => [...(scope ? scope.querySelectorAll("button") : [])].find(
    (b) => !b.hidden &&
      (b.getAttribute("aria-label") || b.textContent || "").trim().toLowerCase() === name);

  const present = (on) => {
    root.classList.toggle("lc-present", on);
    const url = new URL(location.href);
    if (on) url.searchParams.set("view", "captions");
    else url.searchParams.delete("view");
    history.replaceState(history.state, "", url);
    if (!on && document.fullscreenElement) document.exitFullscreen().catch(() => {});
  };
  window.liveCaptionsPresent = present;
  if (params.get("view") === "captions") present(true);
  // The theme: ?theme=light|dark, else the system's, followed while it changes (T overrides).
  const system = window.matchMedia("(prefers-color-scheme: dark)");
  let chosen = params.get("theme");
  const theme = () => (root.dataset.lcTheme = chosen || (system.matches ? "dark" : "light"));
  system.addEventListener("change", theme);
  theme();

  const exit = document.createElement("button");
  exit.type = "button";
  exit.id = "present-exit";
  exit.textContent = "Exit presentation (P)";
  exit.addEventListener("click", () => present(false));
  const hint = document.createElement("div");
  hint.id = "present-hint";
  hint.textContent = "R record / stop · F full screen · T light/dark";
  const mount = () => document.body ? document.body.append(exit, hint) : setTimeout(mount, 20);
  mount();

  // The figures panel is re-rendered with every update, which closes it: keep it the way the
  // person left it (their clicks on its summary decide, not the re-renders).
  let figuresOpen = false;
  document.addEventListener("click", (e) => {
    const summary = e.target.closest && e.target.closest("#figures summary");
    if (summary) figuresOpen = !summary.parentElement.open;
  }, true);
  new MutationObserver(() => {
    const fold = document.querySelector("#figures details");
    if (fold && fold.open !== figuresOpen) fold.open = figuresOpen;
  }).observe(document.documentElement, {
    childList: true, subtree: true, attributes: true, attributeFilter: ["open"],
  });

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    const t = e.target;
    if (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) return;
    const key = e.key.toLowerCase();
    const presenting = root.classList.contains("lc-present");
    let button = null;
    if (key === "r") {
      const mic = document.querySelector("#mic");
      button = named(mic, "stop") || named(mic, "record");
    } else if (key === "c" && !presenting) {
      button = document.querySelector("#clear");
    } else if (key === "p") {
      e.preventDefault();
      present(!presenting);
    } else if (key === "f" && presenting) {
      e.preventDefault();
      if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
      else root.requestFullscreen().catch(() => {});
    } else if (key === "t" && presenting) {
      e.preventDefault();
      chosen = root.dataset.lcTheme === "dark" ? "light" : "dark";
      theme();
    }
    if (button) {
      e.preventDefault();
      button.click();
    }
  });
})();
