// The subtitle result as a person checks it: the uploaded file in a <video> (or <audio>) player with the
// subtitles as a WebVTT <track>, and the cue list beside it, where choosing a cue plays from there.
// Audio elements draw no captions, so for audio the current cue is shown in a caption line under the player.

import { el } from "./api.js";
import { formatClock } from "./format.js";

export class SubtitlePlayer {
  constructor(container, cueList) {
    this.container = container;
    this.cueList = cueList;
    this.urls = [];
    this.media = null;
  }

  clear() {
    for (const url of this.urls) URL.revokeObjectURL(url);
    this.urls = [];
    if (this.media) this.media.pause();
    this.media = null;
    this.container.replaceChildren();
    this.cueList.replaceChildren();
  }

  url(blob) {
    const u = URL.createObjectURL(blob);
    this.urls.push(u);
    return u;
  }

  /** file: the uploaded File, or null (a result from the history: cues only); vtt: WebVTT text. */
  show(file, vtt, cues, lang) {
    this.clear();
    if (file) this.mount(file, vtt, lang);
    else this.container.append(el("p", { class: "hint small", text: "Choose the same file again and make subtitles to play it with them." }));
    this.cueList.replaceChildren(...cues.map((cue) => this.cueItem(cue)));
  }

  mount(file, vtt, lang) {
    const isVideo = (file.type || "").startsWith("video/");
    const media = el(isVideo ? "video" : "audio", {
      controls: true, preload: "metadata", src: this.url(file), "aria-label": `${file.name} with subtitles`,
    });
    const track = el("track", {
      kind: "subtitles", label: "Subtitles", srclang: lang || "und", default: true,
      src: this.url(new Blob([vtt], { type: "text/vtt" })),
    });
    media.append(track);
    this.container.append(media);
    if (!isVideo) {
      const line = el("p", { class: "caption-line", "aria-hidden": "true" });
      this.container.append(line);
      track.track.mode = "hidden"; // cues still fire cuechange; the page draws them
      track.addEventListener("cuechange", () => {
        const active = [...(track.track.activeCues || [])].map((c) => c.text);
        line.textContent = active.join(" ");
      });
    }
    media.addEventListener("timeupdate", () => this.highlight(media.currentTime * 1000));
    this.media = media;
  }

  cueItem(cue) {
    const time = el("span", { class: "time", text: formatClock(cue.startMs) });
    const words = el("span", { class: "words", text: cue.text.replace(/\n/g, " ") });
    if (!this.media) return el("li", { "data-start": cue.startMs }, time, words);
    const button = el("button", { type: "button", class: "cue", "data-start": cue.startMs }, time, words);
    button.addEventListener("click", () => {
      this.media.currentTime = cue.startMs / 1000;
      this.media.play().catch(() => {}); // autoplay refusals leave the controls for the user
    });
    return el("li", {}, button);
  }

  highlight(ms) {
    for (const node of this.cueList.querySelectorAll("[data-start]")) {
      const next = node.closest("li").nextElementSibling?.querySelector("[data-start]");
      const on = ms >= Number(node.dataset.start) && (!next || ms < Number(next.dataset.start));
      if (on) node.setAttribute("aria-current", "true");
      else node.removeAttribute("aria-current");
    }
  }
}
