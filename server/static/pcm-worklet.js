// AudioWorklet: microphone float samples at the context's rate -> 16 kHz mono signed 16-bit PCM, posted to the
// page in fixed frames (~100 ms). Running on the audio thread keeps capture glitch-free while the page is busy.

class PcmS16leProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.targetRate = opts.targetRate || 16000;
    // Input samples per output sample; the box average over each step is a cheap anti-alias filter, which is
    // enough for speech recognition (energy above 8 kHz carries little speech information).
    this.step = sampleRate / this.targetRate;
    // Kept apart from the frame: a transferred buffer is detached, and a detached array's length reads 0.
    this.frameSamples = opts.frameSamples || 1600;
    this.frame = new Int16Array(this.frameSamples);
    this.filled = 0;
    this.pos = 0;
    this.sum = 0;
    this.count = 0;
    this.last = 0;
    this.energy = 0;
  }

  emit(value) {
    const v = Math.max(-1, Math.min(1, value));
    this.frame[this.filled++] = v < 0 ? v * 0x8000 : v * 0x7fff;
    this.energy += v * v;
    if (this.filled === this.frameSamples) {
      const pcm = this.frame.buffer;
      const level = Math.sqrt(this.energy / this.frameSamples);
      this.port.postMessage({ pcm, level }, [pcm]); // transferred, not copied: the audio thread stays cheap
      this.frame = new Int16Array(this.frameSamples);
      this.filled = 0;
      this.energy = 0;
    }
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const n = channels[0].length;
    for (let i = 0; i < n; i++) {
      let x = 0;
      for (let c = 0; c < channels.length; c++) x += channels[c][i];
      this.sum += x / channels.length;
      this.count++;
      this.pos += 1;
      while (this.pos >= this.step) {
        this.pos -= this.step;
        if (this.count) {
          this.last = this.sum / this.count;
          this.sum = 0;
          this.count = 0;
        }
        this.emit(this.last); // repeats the last value only when upsampling from a rate below 16 kHz
      }
    }
    return true;
  }
}

registerProcessor("pcm-s16le", PcmS16leProcessor);
