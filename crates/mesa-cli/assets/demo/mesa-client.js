// Built from clients/js/src/index.ts by `npm run vendor` in clients/js; do not edit.
/**
 * A client for Mesa WebSocket gateways (`docs/protocol.md`), in browsers and in Node.
 *
 * A drop-in for `mesa-js-client` 1.4.8 (same default export, constructor, `connect()`, `authenticate()`,
 * `send()`, `disconnect()` and `on*` callbacks), plus: bounded memory, exponential backoff with full jitter,
 * re-authentication before queued sends are flushed, a bounded send queue, dead-server detection, close codes
 * that stop reconnection, reconnection on `online` / page visibility, `addEventListener` events, and resumable
 * sessions (`docs/protocol.md`, "Resumable sessions"): after a reconnect, to any node, every durable dispatch
 * the page missed arrives once and in order, or the `session` event says the session was lost.
 *
 * The connection is one state machine (`ConnectionState`); every timer goes through an injectable `Clock`, so
 * the unit tests drive it on a fake clock with a fake socket.
 */
/** An event of the client (`addEventListener`): `statechange`, `connected`, `authenticated`, `session`,
 * `message`, `disconnected`, `error`, `queuefull`, `dead`. */
export class MesaEvent extends Event {
    constructor(type, detail) {
        super(type);
        this.detail = detail;
    }
}
/**
 * Close codes after which reconnecting cannot help (`docs/protocol.md`, "Close codes"): normal (the
 * application disconnected us), protocol error / version mismatch, unsupported data, invalid payload,
 * authentication failed, message too big, decode error, not authenticated, already authenticated, session
 * taken over (another connection resumed this one's session and serves it now).
 */
export const TERMINAL_CLOSE_CODES = [1000, 1002, 1003, 1007, 1008, 1009, 4002, 4003, 4005, 4012];
/** Server close codes that keep a resumable session (and a connection that drops without a close frame). */
export const SESSION_KEEPING_CLOSE_CODES = [1001, 1005, 1006, 1011, 1012, 1013, 4008, 4009, 4010];
/** The close code of the client's own closes that keep its session (1000 would end it). */
const KEEP_SESSION_CLOSE = 4000;
/** Unsolicited acknowledgements go out at most this often while dispatches arrive, and once this long after
 * the last (the Rust client's rate). */
const ACK_DEBOUNCE_MS = 100;
/** The op 9 `code` of refused credentials (any other code answering op 6 refuses the session only). */
const AUTHENTICATION_FAILED = 'authentication_failed';
/** Whether a close code allows reconnecting. */
export function canReconnect(code) {
    return !TERMINAL_CLOSE_CODES.includes(code);
}
/** The delay before reconnection attempt `attempt` (0-based): uniform in [0, min(cap, base × 2^attempt)]. */
export function backoffDelay(attempt, base, cap, random) {
    const ceiling = Math.min(cap, base * Math.pow(2, Math.min(attempt, 30)));
    return Math.floor(random() * (ceiling + 1));
}
/** The silence after which a server that heartbeats every `interval` ms is dead. */
export function livenessTimeout(interval, slack) {
    return interval + (slack ?? Math.max(1000, Math.floor(interval / 2)));
}
const OPEN = 1;
const ALREADY_CONNECTED = 'This client is already connected to a pre-existing Mesa server. Call disconnect() to disconnect before attempting to reconnect again';
const systemClock = {
    now: () => Date.now(),
    setTimeout: (callback, ms) => setTimeout(callback, ms),
    clearTimeout: (handle) => clearTimeout(handle),
};
/** A Mesa client. See the README for the API, what it keeps in memory and its reconnect schedule. */
export default class MesaClient extends EventTarget {
    /** A client for `url`; connects at once unless `autoConnect` is `false`. */
    constructor(url, config = {}) {
        super();
        /** The current socket, `null` between connections. */
        this.ws = null;
        /** Whether op 22 arrived on the current connection. */
        this.authenticated = false;
        /** The last frames, bounded by `messageLogLimit`. */
        this.messages = { sent: [], received: [] };
        /** See `ConnectionState`. */
        this.state = 'idle';
        /** Reconnection attempts since the last healthy connection. */
        this.attempt = 0;
        /** When the next reconnection attempt starts (clock ms), while `reconnecting`. */
        this.nextReconnectAt = null;
        /** The user object of the last op 22 (with `sends_user_object`). */
        this.user = undefined;
        /** The rules of the last Hello. */
        this.rules = [];
        /** The code and reason of the last close. */
        this.lastClose = null;
        /** The resumable session held (kept across reconnections), or `null`. */
        this.session = null;
        this.queue = [];
        this.credentials = null;
        this.credentialsKey = null;
        this.waiters = [];
        /** The Hello of the current connection (`null` until it arrives). */
        this.hello = null;
        /** The last Hello of any connection: its timings still apply while a reconnection has none yet. */
        this.advertised = {};
        this.generation = 0;
        this.stopped = false;
        this.reconnectTimer = null;
        this.connectTimer = null;
        this.livenessTimer = null;
        this.authTimer = null;
        this.drainTimer = null;
        this.ackTimer = null;
        /** Op 2 waits for the Hello (it says whether to resume); set while it does. */
        this.authDeferred = false;
        /** The kind of the op 2 / op 6 awaiting its answer on this connection. */
        this.inFlight = null;
        /** Whether this connection serves `session` (op 22 of a resumable session arrived on it). */
        this.sessionLive = false;
        /** The last `s` acknowledged to the server. */
        this.acked = 0;
        /** Why the previous session was lost, reported with the next fresh one. */
        this.invalidated = null;
        /** The close code `disconnect()` closed with, until that close arrives. */
        this.closingWith = null;
        /** Op 7's `retry_after_ms`, added to the next reconnection delay. */
        this.retryAfter = 0;
        this.lastHeard = 0;
        this.isInitialConnection = true;
        this.isInitialSessionConnection = true;
        this.isAutomaticReconnection = false;
        this.listening = false;
        this.onOnline = () => this.wake();
        this.onVisibility = () => {
            const doc = globalThis.document;
            if (!doc || doc.visibilityState === 'visible')
                this.wake();
        };
        this.url = url;
        this.WS = config.WebSocket ?? globalThis.WebSocket;
        this.clock = config.clock ?? systemClock;
        this.random = config.random ?? Math.random;
        this.options = {
            autoConnect: config.autoConnect ?? true,
            reconnect: config.reconnect ?? true,
            reconnectInterval: config.reconnectInterval ?? 1000,
            reconnectCap: config.reconnectCap ?? 30000,
            maxQueue: config.maxQueue ?? 1000,
            messageLogLimit: config.messageLogLimit ?? 0,
            heartbeatSlack: config.heartbeatSlack,
            helloTimeout: config.helloTimeout ?? 10000,
            connectTimeout: config.connectTimeout ?? 10000,
            authenticationTimeout: config.authenticationTimeout ?? 10000,
            rate: config.rate ?? { burst: 100, perSecond: 50 },
            reconnectOnVisibility: config.reconnectOnVisibility ?? true,
            clock: this.clock,
            random: this.random,
            clientVersion: config.clientVersion ?? '1.5.3',
            resume: config.resume ?? true,
        };
        this.tokens = this.options.rate.burst;
        this.tokensAt = this.clock.now();
        if (this.options.autoConnect)
            this.connect().catch(() => { });
    }
    /** Frames waiting in the send queue. */
    get queued() {
        return this.queue.length;
    }
    /** Opens a connection; resolves when the socket opens, rejects on its error (as mesa-js-client). Reconnection
     * after a failure is automatic unless stopped. */
    connect() {
        return new Promise((resolve, reject) => {
            if (this.ws && this.ws.readyState === OPEN) {
                reject(new Error(ALREADY_CONNECTED));
                return;
            }
            this.stopped = false;
            this.listen(true);
            this.cancel('reconnectTimer');
            this.open(resolve, reject);
        });
    }
    /** Sends op 2 with `data` (plus `shouldSync`, default `true`) and resolves with the user object of op 22
     * (`undefined` without `sends_user_object`). The credentials are kept and sent again after every reconnect,
     * before queued sends. Rejects when the server refuses them (close 1008 or op 9). */
    authenticate(data, config) {
        const payload = { ...data, shouldSync: true, ...(config ?? {}) };
        const key = JSON.stringify(payload);
        const promise = new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
        // A page written for mesa-js-client authenticates in onConnected, after this client already re-sent the
        // same credentials: wait for that op 22 instead of sending a second op 2.
        if (this.state === 'authenticating' && key === this.credentialsKey)
            return promise;
        this.credentials = payload;
        this.credentialsKey = key;
        if (this.state === 'connected' || this.state === 'authenticating')
            this.sendAuthentication();
        return promise;
    }
    /** Sends a frame, or queues it while not connected (or paced). Returns `false` when the queue is full (the
     * frame is dropped; a `queuefull` event says so). */
    send(opcode, data, type) {
        const frame = type === undefined ? { op: opcode, d: data } : { op: opcode, d: data, t: type };
        if (this.state === 'connected' && this.queue.length === 0 && this.take()) {
            this.write(frame);
            return true;
        }
        if (this.queue.length >= this.options.maxQueue) {
            this.emit('queuefull', { dropped: frame, capacity: this.options.maxQueue });
            return false;
        }
        this.queue.push(frame);
        if (this.state === 'connected')
            this.scheduleDrain();
        return true;
    }
    /** Closes the connection and stops reconnecting (code 1000 unless given). Queued frames stay queued for a
     * later `connect()`. Code 1000 ends the resumable session; any other code (e.g. 4000) keeps it, and a later
     * `connect()` resumes it. */
    disconnect(code, data) {
        this.stopped = true;
        this.listen(false);
        this.cancel('reconnectTimer');
        this.nextReconnectAt = null;
        const closeCode = code ?? 1000;
        const ws = this.ws;
        if (ws) {
            this.closingWith = closeCode;
            try {
                ws.close(closeCode, data);
            }
            catch {
                this.closingWith = 1000;
                ws.close();
            }
            this.isInitialSessionConnection = true;
        }
        else {
            if (closeCode === 1000)
                this.forgetSession({ reason: 'disconnected' });
            this.setState('closed');
        }
    }
    // --- the connection ------------------------------------------------------------------------------------
    open(resolve, reject) {
        if (!this.WS) {
            const error = new Error('no WebSocket: pass the `WebSocket` option (for example the `ws` package) outside browsers');
            this.onError?.(error);
            reject?.(error);
            return;
        }
        const previous = this.ws;
        if (previous) {
            // connect() while an attempt is under way: that socket is replaced, not left open behind our back.
            previous.onopen = previous.onmessage = previous.onclose = previous.onerror = null;
            try {
                previous.close(this.session ? KEEP_SESSION_CLOSE : 1000);
            }
            catch {
                /* already closing */
            }
            this.ws = null;
        }
        const generation = ++this.generation;
        this.nextReconnectAt = null;
        this.hello = null;
        this.setState('connecting');
        let ws;
        try {
            ws = new this.WS(this.url);
        }
        catch (error) {
            reject?.(error);
            this.closed(1006, String(error));
            return;
        }
        this.ws = ws;
        const current = () => generation === this.generation;
        this.connectTimer = this.clock.setTimeout(() => {
            if (current())
                this.abandon(1006, `the socket did not open within ${this.options.connectTimeout} ms`);
        }, this.options.connectTimeout);
        ws.onopen = () => {
            if (!current())
                return;
            resolve?.();
            this.opened();
        };
        ws.onmessage = (event) => {
            if (current())
                this.received(event.data);
        };
        ws.onclose = (event) => {
            if (current())
                this.closed(event.code, event.reason);
        };
        ws.onerror = (event) => {
            if (!current())
                return;
            reject?.(event);
            this.onError?.(new Error(event?.type ?? 'error'));
            this.emit('error', { error: event });
        };
    }
    opened() {
        this.cancel('connectTimer');
        this.lastHeard = this.clock.now();
        this.armLiveness(this.options.helloTimeout);
        this.setState('connected');
        // Re-authenticate before anything queued goes out (mesa-js-client flushed first).
        if (this.credentials)
            this.sendAuthentication();
        const options = {
            isInitialConnection: this.isInitialConnection,
            isInitialSessionConnection: this.isInitialSessionConnection,
            isAutomaticReconnection: this.isAutomaticReconnection,
        };
        this.isInitialConnection = false;
        this.isInitialSessionConnection = false;
        this.isAutomaticReconnection = false;
        this.onConnected?.(options);
        this.emit('connected', { ...options });
        if (this.state === 'connected')
            this.drain();
    }
    received(raw) {
        this.lastHeard = this.clock.now();
        let frame;
        try {
            frame = JSON.parse(String(raw));
        }
        catch (error) {
            this.onError?.(error instanceof Error ? error : new Error(String(error)));
            return;
        }
        if (frame === null || typeof frame !== 'object')
            return;
        this.log('received', frame);
        const { op, d, t, s } = frame;
        switch (op) {
            case 1:
                // A server that heartbeats us (or answered op 2, below) is healthy: the backoff starts over. Not on
                // Hello: a server that accepts and then closes at once would otherwise be retried at the base rate.
                if (!this.credentials)
                    this.attempt = 0;
                // In a resumable session every answer acknowledges (Mesa 1.5: never an `s`).
                if (this.sessionLive && this.session) {
                    this.write({ op: 11, d: {}, s: this.session.last });
                    this.acked = this.session.last;
                    this.cancel('ackTimer');
                }
                else {
                    this.write({ op: 11, d: {} });
                }
                this.rearmLiveness();
                return;
            case 10:
                this.hello = (d ?? {});
                this.advertised = this.hello;
                this.rules = Array.isArray(this.hello.rules) ? this.hello.rules : [];
                if (this.rules.includes('enforce_equal_versions')) {
                    this.write({ op: 0, d: { v: this.options.clientVersion }, t: 'CLIENT_VERSION' });
                }
                this.rearmLiveness();
                if (this.authDeferred)
                    this.sendAuthentication();
                return;
            case 22: {
                this.cancel('authTimer');
                const attempt = this.inFlight;
                this.inFlight = null;
                let user = d;
                let session = null;
                if (isSessionAnswer(d) && (attempt === 'fresh' || attempt === 'resume')) {
                    user = d.user;
                    session = this.adoptSession(attempt, d);
                }
                else if (isSessionAnswer(d) && this.sessionLive) {
                    user = d.user; // a plain op 2 (new token) on a connection that serves the session
                }
                else if (attempt === 'resume') {
                    // The server opened no session after all: Mesa 1.5 semantics on this connection.
                    this.forgetSession({ reason: 'refused', code: 'not_resumed', detail: 'op 22 without a session id' });
                }
                this.authenticated = true;
                this.user = this.rules.includes('sends_user_object') ? user : undefined;
                this.attempt = 0;
                this.settle((waiter) => waiter.resolve(this.user));
                this.setState('connected');
                this.emit('authenticated', { user: this.user });
                if (session) {
                    this.onSession?.(session);
                    this.emit('session', { ...session });
                }
                this.rearmLiveness();
                this.drain();
                return;
            }
            case 7: {
                const retryAfter = Number(d?.retry_after_ms);
                this.retryAfter = Number.isFinite(retryAfter) && retryAfter > 0 ? Math.min(retryAfter, this.options.reconnectCap) : 0;
                // The server is going away. A resumable session leaves at once (the next node replays what follows);
                // otherwise the connection is kept until the server closes it (1012), since what it still delivers
                // meanwhile would not be replayed.
                if (this.sessionLive)
                    this.abandon(1012, 'the server asked to reconnect (op 7)', true);
                else
                    this.rearmLiveness();
                return;
            }
            case 9: {
                const code = d && typeof d.code === 'string' ? d.code : null;
                const reason = (d && typeof d.reason === 'string' && d.reason) || 'authentication refused';
                if (this.state === 'authenticating' && this.inFlight !== null) {
                    this.cancel('authTimer');
                    const attempt = this.inFlight;
                    this.inFlight = null;
                    if (attempt === 'resume') {
                        // Any op 9 ends the session, whatever it refused.
                        this.forgetSession({ reason: 'refused', code: code ?? AUTHENTICATION_FAILED, detail: reason });
                        if (code !== null && code !== AUTHENTICATION_FAILED) {
                            // Only the session was refused: a fresh one on this connection, for the same callers.
                            this.sendAuthentication();
                            this.rearmLiveness();
                            return;
                        }
                    }
                    this.credentials = null;
                    this.credentialsKey = null;
                    this.settle((waiter) => waiter.reject(new Error(reason)));
                    this.setState('connected');
                    this.drain();
                }
                else if (this.sessionLive && code !== null && code !== AUTHENTICATION_FAILED) {
                    // Mid-session: it cannot go on without a gap; the server closes with 4013 next.
                    this.sessionLive = false;
                    this.cancel('ackTimer');
                    this.forgetSession({ reason: 'refused', code, detail: reason });
                }
                break;
            }
            case 0:
                if (this.sessionLive && this.session && typeof s === 'number') {
                    const last = this.session.last;
                    if (s <= last) {
                        // A duplicate (a client-side defence: the server sends none).
                        this.rearmLiveness();
                        return;
                    }
                    if (s > last + 1) {
                        // A gap (never sent either): resume from the last one handed over.
                        this.abandon(KEEP_SESSION_CLOSE, `sequence gap: expected s = ${last + 1}, got ${s}`);
                        return;
                    }
                    this.session.last = s;
                    this.scheduleAck();
                }
                break;
        }
        this.rearmLiveness();
        const message = { opcode: op, data: d, type: t };
        if (s)
            message.sequence = s;
        this.onMessage?.(message);
        this.emit('message', { message });
    }
    /** The connection ended with `code`: the server's (or the socket's) close, or `local` when the client
     * gave the socket up itself (then the session is kept: it closed with 4000). */
    closed(code, reason, local = false) {
        this.generation++;
        for (const timer of ['connectTimer', 'livenessTimer', 'authTimer', 'drainTimer', 'ackTimer']) {
            this.cancel(timer);
        }
        const ws = this.ws;
        if (ws)
            ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        this.ws = null;
        this.authenticated = false;
        this.authDeferred = false;
        this.inFlight = null;
        this.sessionLive = false;
        this.lastClose = { code, reason };
        const closingWith = this.closingWith;
        this.closingWith = null;
        if (closingWith !== null) {
            if (closingWith === 1000)
                this.forgetSession({ reason: 'disconnected' });
        }
        else if (!local && !SESSION_KEEPING_CLOSE_CODES.includes(code)) {
            this.forgetSession({ reason: 'server_closed', code, detail: reason });
        }
        const terminal = !canReconnect(code) && !this.stopped;
        if (terminal && code === 1008) {
            this.credentials = null;
            this.credentialsKey = null;
            this.settle((waiter) => waiter.reject(new Error(reason || 'authentication failed')));
        }
        const willAttemptReconnect = !this.stopped && !terminal && this.options.reconnect;
        if (!willAttemptReconnect) {
            this.stopped = true;
            this.listen(false);
        }
        this.onDisconnected?.(code, reason, { willAttemptReconnect });
        this.emit('disconnected', { code, reason, willAttemptReconnect });
        if (willAttemptReconnect)
            this.scheduleReconnect(code === 1012);
        else
            this.setState('closed');
    }
    /** Drops the current socket without waiting for its close handshake (a dead server never answers one) and
     * handles it as closed with `code`. */
    abandon(code, reason, soon = false) {
        const ws = this.ws;
        this.generation++;
        if (ws) {
            // 1000 would end a resumable session.
            const closeCode = soon && !this.session ? 1000 : KEEP_SESSION_CLOSE;
            try {
                ws.close(closeCode, truncateReason(reason));
            }
            catch {
                /* already closing */
            }
        }
        this.closed(soon ? 1012 : code, reason, true);
    }
    scheduleReconnect(soon) {
        const base = this.advertised.c_reconnect_interval ?? this.options.reconnectInterval;
        // After op 7, its `retry_after_ms` first, so that a node's clients do not all arrive at once.
        const retryAfter = soon ? this.retryAfter : 0;
        this.retryAfter = 0;
        const delay = soon
            ? retryAfter + backoffDelay(0, Math.min(base, 1000), this.options.reconnectCap, this.random)
            : backoffDelay(this.attempt, base, this.options.reconnectCap, this.random);
        if (!soon)
            this.attempt++;
        this.nextReconnectAt = this.clock.now() + delay;
        this.isAutomaticReconnection = true;
        this.setState('reconnecting', { delay });
        this.reconnectTimer = this.clock.setTimeout(() => {
            this.reconnectTimer = null;
            this.open();
        }, delay);
    }
    /** `online` or visible again: skip the wait, and notice a server that went silent while timers slept. */
    wake() {
        if (this.stopped)
            return;
        if (this.state === 'reconnecting') {
            this.cancel('reconnectTimer');
            this.open();
        }
        else if ((this.state === 'connected' || this.state === 'authenticating') && this.hello?.c_heartbeat_interval) {
            const timeout = livenessTimeout(this.hello.c_heartbeat_interval, this.options.heartbeatSlack);
            if (this.clock.now() - this.lastHeard > timeout)
                this.dead(this.clock.now() - this.lastHeard);
        }
    }
    // --- authentication and liveness -----------------------------------------------------------------------
    sendAuthentication() {
        if (!this.credentials)
            return;
        this.authenticated = false;
        this.setState('authenticating');
        // Whether to resume, start a resumable session or authenticate as Mesa 1.5 depends on the Hello.
        this.authDeferred = this.options.resume && this.hello === null;
        if (this.authDeferred)
            return;
        const [attempt, frame] = this.credentialsFrame(this.credentials);
        this.inFlight = attempt;
        this.write(frame);
        this.cancel('authTimer');
        const timeout = this.advertised.c_authentication_timeout ?? this.options.authenticationTimeout;
        this.authTimer = this.clock.setTimeout(() => {
            this.authTimer = null;
            this.abandon(4006, `no authentication answer (op 22) within ${timeout} ms`);
        }, timeout);
    }
    /** The frame that authenticates with `credentials` on this connection: op 6 for the held session when the
     * server offers resumption, op 2 `resumable: true` without one, Mesa 1.5's op 2 otherwise: on a connection
     * that already serves the session (a new token for it), and with `shouldSync: false` (Mesa 1.5's "no
     * backlog", which a resumable session, replaying its mailbox, would not keep). */
    credentialsFrame(credentials) {
        const plain = !this.options.resume || !isResumeOffer(this.hello?.c_resume) || this.sessionLive || credentials.shouldSync === false;
        if (plain) {
            return ['plain', { op: 2, d: credentials }];
        }
        if (this.session) {
            return ['resume', { op: 6, d: { ...credentials, session_id: this.session.id, seq: this.session.last } }];
        }
        return ['fresh', { op: 2, d: { ...credentials, resumable: true } }];
    }
    /** Op 22 answering op 6 or a resumable op 2: the session goes on, or a fresh one replaces it. */
    adoptSession(attempt, d) {
        this.sessionLive = true;
        this.cancel('ackTimer');
        if (attempt === 'resume' && d.resumed === true && this.session) {
            this.session.id = d.session_id;
            // The resume itself acknowledged `last` (the server's cursor moved to it).
            this.acked = this.session.last;
            return { sessionId: d.session_id, resumed: true, seq: this.session.last, invalidated: null };
        }
        if (attempt === 'resume') {
            this.forgetSession({ reason: 'refused', code: 'not_resumed', detail: 'the server answered the resume with a fresh session' });
        }
        this.session = { id: d.session_id, last: d.seq };
        this.acked = d.seq;
        const invalidated = this.invalidated;
        this.invalidated = null;
        return { sessionId: d.session_id, resumed: false, seq: d.seq, invalidated };
    }
    /** The session can no longer be resumed; the next fresh one reports why. */
    forgetSession(why) {
        const lost = this.session;
        if (!lost)
            return;
        this.session = null;
        this.sessionLive = false;
        this.cancel('ackTimer');
        this.invalidated = { sessionId: lost.id, lastSeq: lost.last, ...why };
    }
    /** Trailing-edge debounce: the first dispatch after an acknowledgement arms the timer. */
    scheduleAck() {
        if (this.ackTimer !== null)
            return;
        this.ackTimer = this.clock.setTimeout(() => {
            this.ackTimer = null;
            if (!this.sessionLive || !this.session || this.session.last <= this.acked)
                return;
            this.acked = this.session.last;
            this.write({ op: 11, d: {}, s: this.session.last });
        }, ACK_DEBOUNCE_MS);
    }
    settle(action) {
        const waiters = this.waiters;
        this.waiters = [];
        waiters.forEach(action);
    }
    rearmLiveness() {
        const interval = this.hello?.c_heartbeat_interval;
        if (interval)
            this.armLiveness(livenessTimeout(interval, this.options.heartbeatSlack));
        else if (this.hello)
            this.cancel('livenessTimer');
    }
    armLiveness(timeout) {
        this.cancel('livenessTimer');
        this.livenessTimer = this.clock.setTimeout(() => {
            this.livenessTimer = null;
            this.dead(this.clock.now() - this.lastHeard);
        }, timeout);
    }
    dead(silentFor) {
        this.emit('dead', { silentFor });
        this.abandon(1006, `no frame from the server for ${silentFor} ms (dead server)`);
    }
    // --- sending --------------------------------------------------------------------------------------------
    write(frame) {
        if (!this.ws)
            return;
        this.log('sent', frame);
        this.ws.send(JSON.stringify(frame));
    }
    /** Takes one send token; pacing keeps a flushed queue under the server's inbound rate limit. */
    take() {
        const now = this.clock.now();
        const { burst, perSecond } = this.options.rate;
        this.tokens = Math.min(burst, this.tokens + ((now - this.tokensAt) * perSecond) / 1000);
        this.tokensAt = now;
        if (this.tokens < 1)
            return false;
        this.tokens -= 1;
        return true;
    }
    drain() {
        this.cancel('drainTimer');
        while (this.state === 'connected' && this.queue.length > 0 && this.take()) {
            const frame = this.queue.shift();
            this.write(frame);
        }
        this.scheduleDrain();
    }
    scheduleDrain() {
        if (this.drainTimer !== null || this.queue.length === 0 || this.state !== 'connected')
            return;
        const wait = Math.ceil(1000 / this.options.rate.perSecond);
        this.drainTimer = this.clock.setTimeout(() => {
            this.drainTimer = null;
            this.drain();
        }, wait);
    }
    // --- plumbing -------------------------------------------------------------------------------------------
    log(direction, frame) {
        const limit = this.options.messageLogLimit;
        if (limit <= 0)
            return;
        const log = this.messages[direction];
        log.push(frame);
        if (log.length > limit)
            log.splice(0, log.length - limit);
    }
    cancel(timer) {
        if (this[timer] !== null) {
            this.clock.clearTimeout(this[timer]);
            this[timer] = null;
        }
    }
    setState(state, extra = {}) {
        if (this.state === state && Object.keys(extra).length === 0)
            return;
        this.state = state;
        this.emit('statechange', { ...extra, attempt: this.attempt, nextReconnectAt: this.nextReconnectAt });
    }
    emit(type, detail) {
        this.dispatchEvent(new MesaEvent(type, { ...detail, state: this.state }));
    }
    listen(on) {
        const target = globalThis;
        if (!this.options.reconnectOnVisibility || typeof target.addEventListener !== 'function')
            return;
        if (on === this.listening)
            return;
        this.listening = on;
        const method = on ? 'addEventListener' : 'removeEventListener';
        target[method]('online', this.onOnline);
        target.document?.[method]?.('visibilitychange', this.onVisibility);
    }
}
/** Whether a Hello's `c_resume` is a resume offer (the four bounds, all numbers). */
function isResumeOffer(offer) {
    if (offer === null || typeof offer !== 'object')
        return false;
    const o = offer;
    return ['session_ttl', 'max_messages', 'max_bytes', 'max_age'].every((key) => typeof o[key] === 'number');
}
/** Whether op 22's `d` is the resumable form `{user, session_id, resumed, seq}`. */
function isSessionAnswer(d) {
    if (d === null || typeof d !== 'object')
        return false;
    const o = d;
    return typeof o.session_id === 'string' && Number.isSafeInteger(o.seq) && o.seq >= 0;
}
/** A close reason within the 123 bytes a close frame allows (UTF-8), cut at a character boundary. */
function truncateReason(reason) {
    let out = reason.slice(0, 100);
    while (new TextEncoder().encode(out).length > 123)
        out = out.slice(0, -1);
    return out;
}
export { MesaClient };
