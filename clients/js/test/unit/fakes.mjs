// A fake clock and a fake WebSocket for the client's state-machine tests: no timers, no network.

/** Timers that fire only when the test advances time. */
export class FakeClock {
  constructor() {
    this.time = 0;
    this.timers = new Map();
    this.nextId = 1;
  }
  now() {
    return this.time;
  }
  setTimeout(callback, ms) {
    const id = this.nextId++;
    this.timers.set(id, { at: this.time + ms, callback });
    return id;
  }
  clearTimeout(id) {
    this.timers.delete(id);
  }
  /** Moves time forward by `ms`, firing due timers in order (timers they set fire too if due). */
  advance(ms) {
    const end = this.time + ms;
    for (;;) {
      let next = null;
      for (const [id, timer] of this.timers) {
        if (timer.at <= end && (next === null || timer.at < next[1].at)) next = [id, timer];
      }
      if (next === null) break;
      this.timers.delete(next[0]);
      this.time = next[1].at;
      next[1].callback();
    }
    this.time = end;
  }
  /** When the next timer fires, or null. */
  nextAt() {
    let at = null;
    for (const timer of this.timers.values()) if (at === null || timer.at < at) at = timer.at;
    return at;
  }
}

/** Records every socket the client makes; the test plays the server. */
export function fakeWebSocket() {
  const sockets = [];
  class FakeSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      sockets.push(this);
    }
    send(data) {
      if (this.readyState !== 1) throw new Error('send on a socket that is not open');
      this.sent.push(JSON.parse(data));
    }
    close(code, reason) {
      this.closedWith = { code, reason };
      this.readyState = 3;
    }
    // --- the server side ---
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    receive(frame) {
      this.onmessage?.({ data: JSON.stringify(frame) });
    }
    hello(d = {}) {
      this.receive({
        op: 10,
        d: { c_heartbeat_interval: 1000, c_reconnect_interval: 500, c_authentication_timeout: 2000, rules: ['sends_user_object'], ...d },
      });
    }
    drop(code = 1006, reason = '') {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
    fail() {
      this.onerror?.({ type: 'error' });
      this.drop(1006);
    }
    ops() {
      return this.sent.map((frame) => frame.op);
    }
  }
  return { FakeSocket, sockets };
}
