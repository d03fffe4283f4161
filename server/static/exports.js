// "Copy" and "Download TXT / SRT / JSON" buttons for a transcript. Each button's accessible name says what it
// acts on ("Download live transcript as SRT"), so a card with several such rows stays unambiguous.

import { el, saveBlob } from "./api.js";
import { segmentsToSrt } from "./format.js";

/** Copies text; falls back to a hidden textarea where the async clipboard is refused. Resolves to success. */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = el("textarea", { class: "sr-only", "aria-hidden": "true" });
    area.value = text;
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}

function stem(name) {
  return (name || "transcript").replace(/\.[^.]+$/, "").replace(/[^\w .-]+/g, "_").slice(0, 80) || "transcript";
}

/**
 * Fills `container` (which names its content in data-label) with the buttons; `current()` returns
 * { name, text, segments, json } for the transcript shown now.
 */
export function exportButtons(container, current) {
  const what = container.dataset.label || "transcript";
  const copy = el("button", { type: "button", class: "btn small", text: "Copy", "aria-label": `Copy ${what}` });
  copy.addEventListener("click", async () => {
    const ok = await copyText(current().text);
    copy.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => (copy.textContent = "Copy"), 2000);
  });
  const save = (format, build, type) => {
    const button = el("button", { type: "button", class: "btn small ghost", text: format.toUpperCase(), "aria-label": `Download ${what} as ${format.toUpperCase()}` });
    button.addEventListener("click", () => {
      const data = current();
      saveBlob(new Blob([build(data)], { type }), `${stem(data.name)}.${format}`);
    });
    return button;
  };
  container.replaceChildren(
    copy,
    el("span", { class: "export-label", text: "Download:" }),
    save("txt", (d) => d.text, "text/plain;charset=utf-8"),
    save("srt", (d) => segmentsToSrt(d.segments), "application/x-subrip;charset=utf-8"),
    save("json", (d) => JSON.stringify(d.json, null, 2) + "\n", "application/json"),
  );
}
