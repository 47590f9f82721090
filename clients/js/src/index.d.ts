// Type definitions of wsq-client (written by hand; test/types.test.js checks they name
// exactly what index.js exports).

export declare const VERSION: string;

/** Close codes after which the client reconnects by default. */
export declare const RECONNECT_CODES: readonly number[];

/** The WebSocket the client needs: the browser's, Node 22's global, or `ws`'s class. */
export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ReconnectOptions {
  /** First retry's delay ceiling in ms (default 500): attempt n waits random(0, min(maxMs, baseMs * 2^(n-1))). */
  baseMs?: number;
  /** The cap of the delay ceiling in ms (default 30000). */
  maxMs?: number;
  /** Attempts since the last stable connection before the client gives up (default Infinity). */
  maxAttempts?: number;
  /** A connection open this long resets the attempt count (default 5000 ms). */
  stableMs?: number;
}

export interface QueueOptions {
  /** Requests that may wait for a connection (default 100; 0: reject with `not_connected` at once). */
  maxRequests?: number;
  /** Fire-and-forget sends that may wait for a connection (default 100; 0: drop at once). */
  maxSends?: number;
}

export interface HeartbeatOptions {
  /** After this long without any frame from the gateway, the client sends `$ping` (default 30000 ms). */
  intervalMs?: number;
  /** No `$pong` within this: the socket is taken for dead and dropped (default 10000 ms). */
  timeoutMs?: number;
}

export interface CloseInfo {
  code: number;
  reason: string;
  /** Whether `$connected` had arrived on that socket. */
  opened: boolean;
}

export interface Clock {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  now(): number;
}

export interface WsqClientOptions {
  /** A fixed token, sent as `?token=` (the gateway's WSQ_JWT_SECRET). */
  token?: string;
  /** Called before every connection attempt (JWTs expire); null or undefined: stop, closed. */
  getToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /** The WebSocket class (default globalThis.WebSocket; in Node 20: `ws`'s). */
  WebSocket?: WebSocketConstructor;
  /** Default timeout of request() in ms, from the call (waiting for a connection included); default 10000. */
  requestTimeoutMs?: number;
  /** An attempt with no `$connected` within this many ms fails (a `$closed` with 1006, "connect timeout") and is retried per `reconnect`; default 15000. */
  connectTimeoutMs?: number;
  /** Frames over this many UTF-8 bytes are refused before sending (`too_large`): the gateway would close the socket with 1009 (default 65536, its WSQ_MAX_MESSAGE_BYTES default). */
  maxFrameBytes?: number;
  /** false: never reconnect. */
  reconnect?: ReconnectOptions | false;
  queue?: QueueOptions;
  /** false: no client-side `$ping`. */
  heartbeat?: HeartbeatOptions | false;
  /** Whether to reconnect after a close (default: defaultShouldReconnect). */
  shouldReconnect?: (info: CloseInfo) => boolean;
  /**
   * Session resume (default true; used only when the gateway's `$connected` carries a
   * `resume_token`, and never with `reconnect: false`): a lost socket is reconnected with
   * `?resume=<token>&after=<last seq>`, keeping the connection id and the frames sent meanwhile.
   * false: every reconnect is a new connection, as with a gateway without resume.
   */
  resume?: boolean;
  /** Connect at once (default true); else connect() opens. */
  autoConnect?: boolean;
  /** For tests: timers and time. */
  clock?: Partial<Clock>;
  /** For tests: the jitter's random source, [0, 1). */
  random?: () => number;
  /** For tests: frame ids (1-64 characters, unique per client). */
  idGenerator?: () => string;
}

export type ClientErrorCode =
  | "timeout"
  | "connection_lost"
  | "closed"
  | "queue_full"
  | "not_connected"
  | "aborted"
  | "too_large"
  | "token"
  | "socket"
  | "invalid_server_frame";

export type ServerErrorCode =
  | "invalid_json"
  | "invalid_frame"
  | "reserved_action"
  | "unknown_action"
  | "handler_error"
  | "unavailable"
  | "overloaded"
  | "rate_limited"
  | "no_workers"
  | "not_taken"
  | "handler_failed";

export declare class WsqError extends Error {
  constructor(code: string, message: string, details?: { sent?: boolean; action?: string; cause?: unknown });
  readonly name: "WsqError";
  /** A server `$error` code, or one of the client's own. */
  readonly code: ServerErrorCode | ClientErrorCode | (string & {});
  /** Whether the frame left this client. */
  readonly sent: boolean;
  /** The request's action, when the error settles a request. */
  readonly action: string | undefined;
  /** The frame certainly did not run: sending it again cannot run it twice. */
  readonly retryable: boolean;
  /** The frame was sent and no answer came: it may or may not have run. */
  readonly outcomeUnknown: boolean;
}

export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface ClientEvents {
  $connecting: { attempt: number };
  $open: {
    connectionId: string | null;
    userId: string | null;
    data: Record<string, unknown>;
    /** The session of the lost socket was resumed: same connection id, user and groups. */
    resumed: boolean;
    /** Resumed, and every frame sent meanwhile follows (in-flight requests stay pending). false: reload the state. */
    recovered: boolean;
  };
  $closed: { code: number; reason: string; willReconnect: boolean };
  $reconnecting: {
    attempt: number;
    delayMs: number;
    code: number;
    reason: string;
    /** The next attempt asks to resume the session (with its token and the last seq seen). */
    resuming: boolean;
  };
  $error: WsqError;
  $dropped: { action: string; data: unknown; reason: "closed" | "queue_full" | "too_large" };
}

export interface RequestOptions {
  /** ms from the call, waiting for a connection included; Infinity: none. */
  timeout?: number;
  signal?: AbortSignal;
}

export declare class WsqClient {
  constructor(url: string | URL, options?: WsqClientOptions);
  readonly state: ConnectionState;
  readonly connectionId: string | null;
  readonly userId: string | null;
  readonly url: string;
  connect(): Promise<void>;
  close(code?: number, reason?: string): void;
  request<T = any>(action: string, data?: unknown, options?: RequestOptions): Promise<T>;
  send(action: string, data?: unknown): boolean;
  ping(options?: RequestOptions): Promise<number>;
  history(group: string, options?: HistoryOptions): Promise<HistoryPage>;
  on<K extends keyof ClientEvents>(name: K, fn: (payload: ClientEvents[K]) => void): () => void;
  on<T = any>(action: string, fn: (data: T, action: string) => void): () => void;
  off(name: string, fn: (...args: any[]) => void): void;
}

export interface HistoryOptions extends RequestOptions {
  /** The offset of the last message the client has: the messages after it. Null: the newest. */
  since?: string | null;
  /** The most messages to return, 1-1000 (the gateway's default: 100). */
  limit?: number;
}

export interface HistoryMessage<T = any> {
  /** The message's offset in the group's history (`<ms>-<n>`): give it as `since`. */
  offset: string;
  action: string;
  data: T;
  /** When it was appended: Redis's clock, ms since the epoch. */
  ts: number;
}

export interface HistoryPage<T = any> {
  /** Oldest first. */
  messages: HistoryMessage<T>[];
  /** Every message asked for is in the page (nothing older left out; with since, nothing newer). */
  complete: boolean;
  /** With since: messages after it were trimmed from the history. */
  gap: boolean;
}

export declare function connect(url: string | URL, options?: WsqClientOptions): Promise<WsqClient>;

export declare function defaultShouldReconnect(info: CloseInfo): boolean;

export declare function backoffDelay(attempt: number, baseMs: number, maxMs: number, random?: () => number): number;
