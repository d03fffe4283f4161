// A progress bar with a line of text and the elapsed time, for uploads and jobs. It is deliberately not a live
// region: a screen reader hears the start and the end through the card's status line, not every tick.

export class ProgressLine {
  constructor(card) {
    this.box = card.querySelector(".progress-line");
    this.bar = this.box.querySelector("progress");
    this.text = this.box.querySelector(".progress-text");
    this.timer = null;
    this.label = "";
    this.t0 = 0;
  }

  elapsedMs() {
    return performance.now() - this.t0;
  }

  elapsedText() {
    const s = Math.floor(this.elapsedMs() / 1000);
    return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  }

  start(label) {
    this.stop();
    this.t0 = performance.now();
    this.box.hidden = false;
    this.update(0, label);
    this.timer = setInterval(() => this.draw(), 1000);
  }

  /** fraction in [0, 1], or null for "working, no measure" (an indeterminate bar). */
  update(fraction, label) {
    if (fraction === null) this.bar.removeAttribute("value");
    else this.bar.value = Math.max(0, Math.min(1, fraction));
    this.label = label;
    this.draw();
  }

  draw() {
    this.text.textContent = `${this.label} · ${this.elapsedText()}`;
  }

  /** Leaves the bar full with the total time, so the result says how long it took. */
  finish(label) {
    const secs = (this.elapsedMs() / 1000).toFixed(1);
    this.stop();
    this.bar.value = 1;
    this.text.textContent = `${label} in ${secs} s`;
  }

  hide() {
    this.stop();
    this.box.hidden = true;
  }

  stop() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
