// @ts-check
/**
 * The Natter chat widget: one script tag puts a chat bubble on a page.
 *
 *   <script src="https://natter.example/widget.js" data-tenant="acme"
 *           data-token-url="/natter-token" async></script>
 *
 * It asks the business's token endpoint for a token (POST {guestId}, with
 * the page's cookies), then keeps one WebSocket to the gateway
 * (`/v1/connect`, subprotocol `natter.v1.json`) and shows the visitor's
 * conversation in a panel inside a shadow root, so the page's styles and
 * the widget's never meet.
 *
 * Delivery: every message the visitor sends is put in an outbox in
 * localStorage before it goes on the wire, under a client message id that
 * never changes, and leaves the outbox only when the server has stored it
 * (`send_ack`, or the stored message arriving) or refused it for good. After
 * a drop the widget reconnects with backoff, replays the outbox with the
 * same ids (the server stores each id once) and catches up from its cursor.
 * Messages are kept by (conversation, seq), so one that arrives twice, as a
 * `message` of the watched conversation and inside an `update`, shows once.
 *
 * Plain JavaScript checked with `tsc --checkJs`; no build step, no
 * dependencies.
 */
(function () {
  'use strict';

  const PROTOCOL = 'natter.v1.json';
  /** Messages kept in localStorage per conversation, newest last. */
  const CACHE_LIMIT = 200;
  /** How often the connection is checked with a ping, and how long a pong may take. */
  const PING_MS = 20000;
  const PONG_TIMEOUT_MS = 10000;
  /** Typing: repeat `active` this often while typing; stop after this long idle. */
  const TYPING_REPEAT_MS = 3000;
  const TYPING_IDLE_MS = 4000;
  /** Others' typing indicators fade after this long without news. */
  const TYPING_SHOWN_MS = 10000;
  /** Updates between cursor acks, and the longest an ack waits. */
  const ACK_EVERY = 20;
  const ACK_DELAY_MS = 1000;

  /**
   * @typedef {{ url: string, mime_type?: string, size_bytes?: string | number,
   *   file_name?: string, thumbnail?: string }} Attachment
   * @typedef {{ title: string, payload: string }} QuickReply
   * @typedef {{ title: string, postback?: { payload: string }, open_url?: { url: string } }} Button
   * @typedef {{ text?: string, attachment?: Attachment,
   *   quick_replies?: { text: string, replies?: QuickReply[] },
   *   template?: { text: string, buttons?: Button[] },
   *   postback?: { title: string, payload: string },
   *   activity?: { status?: string, owner?: string, control_requested?: boolean, assignee_id?: string },
   *   form?: Form, form_reply?: { form_id: string, values?: Record<string, string> },
   *   reply?: { to_seq: string | number, text: string },
   *   payment_request?: PaymentRequest, payment_update?: { payment_id: string, status?: string } }} Content
   * @typedef {{ name: string, quantity?: string | number, unit_amount?: string | number }} LineItem
   * @typedef {{ payment_id: string, amount?: string | number, currency?: string, description?: string,
   *   line_items?: LineItem[], checkout_url?: string, status?: string }} PaymentRequest
   * @typedef {{ name: string, label: string, kind?: string, required?: boolean }} FormField
   * @typedef {{ form_id: string, text: string, fields?: FormField[] }} Form
   * @typedef {{ message_id?: string, conversation_id: string, seq: number,
   *   sender_id: string, client_message_id?: string, sent_at?: string,
   *   content: Content }} Message
   * @typedef {{ conversation_id: string, client_message_id: string, content: Content,
   *   user_id: string }} Pending
   * @typedef {{ token: string, userId: string, conversationId: string,
   *   guestId?: string, aliases?: string[], exp: number }} Auth
   */

  const script = /** @type {HTMLScriptElement | null} */ (
    document.currentScript ||
      document.querySelector('script[data-token-url][src*="widget"]')
  );
  const win = /** @type {any} */ (window);
  if (!script || win.Natter) return;

  const data = script.dataset;
  const tenant = data.tenant || 'default';
  const tokenUrl = data.tokenUrl ? new URL(data.tokenUrl, document.baseURI).href : '';
  const title = data.title || 'Chat';
  const greeting = data.greeting || '';
  const left = data.position === 'left';
  const accent = data.color && CSS.supports('color', data.color) ? data.color : '#3b5bdb';
  const gatewayUrl = socketUrl(data.gateway || script.src);

  // ---- storage: localStorage when it works, memory when it does not ----

  /** @type {Record<string, string>} */
  const memory = {};
  const prefix = 'natter:' + tenant + ':';
  /** @param {string} key */
  function load(key) {
    try {
      return localStorage.getItem(prefix + key);
    } catch (_) {
      return memory[key] ?? null;
    }
  }
  /** @param {string} key @param {string | null} value */
  function save(key, value) {
    try {
      if (value === null) localStorage.removeItem(prefix + key);
      else localStorage.setItem(prefix + key, value);
    } catch (_) {
      if (value === null) delete memory[key];
      else memory[key] = value;
    }
  }
  /** @template T @param {string} key @param {T} fallback @returns {T} */
  function loadJson(key, fallback) {
    try {
      const text = load(key);
      return text ? JSON.parse(text) : fallback;
    } catch (_) {
      return fallback;
    }
  }

  /** A random UUID (v4); works outside secure contexts too. */
  function uuid() {
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  /** @param {string} base the script's own URL or `data-gateway` */
  function socketUrl(base) {
    const url = new URL(base, document.baseURI);
    url.protocol = url.protocol === 'https:' || url.protocol === 'wss:' ? 'wss:' : 'ws:';
    url.pathname = url.pathname.replace(/\/(widget\.js)?$/, '').replace(/\/v1\/connect$/, '') + '/v1/connect';
    url.search = url.hash = '';
    return url.href;
  }

  /**
   * Frames arrive in the proto3 JSON mapping: field names as in the proto
   * (camelCase is accepted too), 64-bit numbers as strings, defaults
   * left out.
   * @param {any} value
   * @returns {any}
   */
  function snake(value) {
    if (Array.isArray(value)) return value.map(snake);
    if (!value || typeof value !== 'object') return value;
    /** @type {Record<string, any>} */
    const out = {};
    for (const key of Object.keys(value)) {
      out[key.replace(/[A-Z]/g, (c) => '_' + c.toLowerCase())] = snake(value[key]);
    }
    return out;
  }

  /**
   * Whether the visitor wrote as `user`: as who they are now, or under an
   * identity linked to it, such as the guest they were before signing in.
   * @param {string} user
   */
  function isMine(user) {
    return !!auth && (user === auth.userId || user === auth.guestId || (auth.aliases || []).includes(user));
  }

  // ---- state ----

  let deviceId = load('device');
  if (!deviceId) save('device', (deviceId = 'web-' + uuid()));
  /** @type {Auth | null} */
  let auth = null;
  /** @type {WebSocket | null} */
  let ws = null;
  let online = false;
  let attempt = 0;
  let retryTimer = 0;
  let pingTimer = 0;
  let pongTimer = 0;
  /** Bumped whenever the identity changes, so stale callbacks do nothing. */
  let epoch = 0;
  let cursor = 0;
  let unacked = 0;
  let ackTimer = 0;
  /** Messages of the shown conversation by seq. @type {Map<number, Message>} */
  let messages = new Map();
  /** Client message ids sent on the current connection and not yet answered. */
  let inFlight = new Set();
  /** The visitor's own read watermark, and the highest the others reached. */
  let readSeq = 0;
  let othersReadSeq = 0;
  let isOpen = false;
  /** Whether this connection asked the desk for the visitor's place. */
  let placeAsked = false;
  /** Users typing now, with the timer that forgets them. @type {Map<string, number>} */
  const typing = new Map();
  let typingSentAt = 0;
  let typingStopTimer = 0;
  let cacheTimer = 0;

  /** @returns {Pending[]} */
  function outbox() {
    return loadJson('outbox', []);
  }
  /** @param {Pending[]} items */
  function saveOutbox(items) {
    save('outbox', items.length ? JSON.stringify(items) : null);
  }

  // ---- the DOM, inside a shadow root ----

  const host = document.createElement('natter-chat');
  host.style.cssText = 'all:initial!important;position:fixed!important;z-index:2147483000!important;';
  const root = host.attachShadow({ mode: 'open' });
  root.innerHTML = `<style>${css()}</style>
<div class="root${left ? ' left' : ''}">
  <section class="panel" id="panel" role="dialog" aria-labelledby="title" tabindex="-1" hidden>
    <header>
      <h2 id="title"></h2>
      <span class="status" role="status"></span>
      <button type="button" class="close" aria-label="Close chat">&times;</button>
    </header>
    <div class="log" role="log" aria-live="polite" aria-label="Messages" tabindex="0">
      <p class="greeting" hidden></p>
      <ol class="msgs"></ol>
    </div>
    <p class="queue" role="status" hidden></p>
    <div class="typing" role="status" aria-live="polite"></div>
    <form class="composer">
      <label class="sr" for="input">Message</label>
      <textarea id="input" rows="1" placeholder="Write a message…" autocomplete="off"></textarea>
      <button type="submit" class="send" aria-label="Send">
        <svg viewBox="0 0 24 24" aria-hidden="true" focusable="false"><path d="M3 20l18-8L3 4v6l12 2-12 2z"/></svg>
      </button>
    </form>
  </section>
  <button type="button" class="launcher" aria-controls="panel" aria-expanded="false">
    <svg viewBox="0 0 24 24" aria-hidden="true" focusable="false"><path d="M4 4h16a2 2 0 012 2v10a2 2 0 01-2 2H9l-5 4v-4a2 2 0 01-2-2V6a2 2 0 012-2z"/></svg>
    <span class="badge" aria-hidden="true" hidden></span>
  </button>
</div>`;
  /** @template {Element} E @param {string} selector @returns {E} */
  const $ = (selector) => /** @type {E} */ (root.querySelector(selector));
  const panel = /** @type {HTMLElement} */ ($('.panel'));
  const launcher = /** @type {HTMLButtonElement} */ ($('.launcher'));
  const badge = /** @type {HTMLElement} */ ($('.badge'));
  const statusLine = /** @type {HTMLElement} */ ($('.status'));
  const log = /** @type {HTMLElement} */ ($('.log'));
  const list = /** @type {HTMLOListElement} */ ($('.msgs'));
  const typingLine = /** @type {HTMLElement} */ ($('.typing'));
  const queueLine = /** @type {HTMLElement} */ ($('.queue'));
  const form = /** @type {HTMLFormElement} */ ($('.composer'));
  const input = /** @type {HTMLTextAreaElement} */ ($('#input'));
  $('#title').textContent = title;
  const greetingLine = /** @type {HTMLElement} */ ($('.greeting'));
  greetingLine.textContent = greeting;
  greetingLine.hidden = !greeting;
  (/** @type {HTMLElement} */ ($('.root'))).style.setProperty('--accent', accent);

  function css() {
    return `
.root{all:initial;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1f2328;
  --accent:#3b5bdb;-webkit-text-size-adjust:100%}
*,*::before,*::after{box-sizing:border-box}
[hidden]{display:none!important}
button,textarea{font:inherit;color:inherit;margin:0}
.launcher{position:fixed;bottom:20px;right:20px;width:56px;height:56px;border:0;border-radius:50%;
  background:var(--accent);color:#fff;cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.25);padding:0;
  display:flex;align-items:center;justify-content:center}
.left .launcher{right:auto;left:20px}
.launcher svg{width:28px;height:28px;fill:currentColor}
.launcher:focus-visible,button:focus-visible,.log:focus-visible{outline:3px solid #1c7ed6;outline-offset:2px}
textarea:focus{outline:2px solid var(--accent);outline-offset:0;border-color:transparent}
.badge{position:absolute;top:-4px;right:-4px;min-width:22px;height:22px;padding:0 6px;border-radius:11px;
  background:#e03131;color:#fff;font-size:12px;font-weight:700;line-height:22px;text-align:center}
.panel:focus{outline:none}
.panel{position:fixed;bottom:88px;right:20px;width:370px;height:min(560px,calc(100vh - 108px));background:#fff;
  border-radius:14px;box-shadow:0 8px 32px rgba(0,0,0,.22);display:flex;flex-direction:column;overflow:hidden}
.left .panel{right:auto;left:20px}
header{display:flex;align-items:center;gap:8px;padding:12px 14px;background:var(--accent);color:#fff}
h2{margin:0;font-size:16px;font-weight:600;flex:1;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.status{font-size:12px;opacity:.9}
.close{background:none;border:0;color:#fff;font-size:24px;line-height:1;cursor:pointer;padding:0 4px;min-width:32px;min-height:32px}
.log{flex:1;overflow-y:auto;padding:12px;background:#f6f7f9}
.greeting{margin:0 0 10px;padding:8px 12px;background:#fff;border-radius:12px;color:#495057}
.msgs{list-style:none;margin:0;padding:0;display:flex;flex-direction:column;gap:6px}
.msg{display:flex;flex-direction:column;align-items:flex-start;max-width:85%}
.msg.mine{align-self:flex-end;align-items:flex-end}
.msg.activity{align-self:center;align-items:center;max-width:100%;font-size:12px;color:#6b7280}
.who{font-size:11px;color:#6c757d;margin:4px 4px 1px}
.bubble{padding:8px 12px;border-radius:14px;background:#fff;border:1px solid #e3e5e8;white-space:pre-wrap;overflow-wrap:anywhere}
.mine .bubble{background:var(--accent);border-color:transparent;color:#fff}
.mine .bubble a{color:#fff}
.meta{font-size:11px;color:#6c757d;margin:1px 4px}
.failed .meta{color:#c92a2a}
.bubble img{display:block;max-width:100%;max-height:240px;border-radius:8px;margin:2px 0}
.quote{margin:0 0 4px;padding:2px 8px;border-left:3px solid currentColor;opacity:.75;font-size:12px;
  overflow:hidden;text-overflow:ellipsis;white-space:nowrap;max-width:240px}
.choices{display:flex;flex-wrap:wrap;gap:6px;margin-top:6px}
.choices button,.choices a{border:1px solid var(--accent);color:var(--accent);background:#fff;border-radius:16px;padding:5px 12px;
  cursor:pointer;text-decoration:none;font-size:13px}
.msg:not(:last-child) .qr{display:none}
.form{display:flex;flex-direction:column;gap:6px;margin-top:6px}
.form label{display:flex;flex-direction:column;font-size:12px;gap:2px}
.form input{font:inherit;padding:5px 8px;border:1px solid #d0d4d9;border-radius:8px}
.form input[aria-invalid=true]{border-color:#d1242f}
.form-error{color:#d1242f;margin:0;font-size:12px}
.form .rating{display:flex;flex-direction:column;font-size:12px;gap:2px}
.form .stars{display:flex;gap:2px}
.form .star{background:none;color:#c4c8cc;font-size:22px;line-height:1;padding:0 2px;border-radius:4px}
.form .star.lit{color:#e3a008}
.form .star:focus-visible{outline:2px solid var(--accent)}
.form button{align-self:flex-start;border:0;border-radius:16px;background:var(--accent);color:#fff;padding:5px 12px;cursor:pointer}
.pay{display:flex;flex-direction:column;gap:4px;min-width:200px}
.pay ul{list-style:none;margin:0;padding:0;font-size:13px}
.pay li,.pay .total{display:flex;justify-content:space-between;gap:12px}
.pay .total{font-weight:600;border-top:1px solid #e3e5e8;padding-top:4px}
.pay .state{font-size:12px;color:#6c757d}
.pay .state[data-status=PAYMENT_STATUS_PAID]{color:#2b8a3e;font-weight:600}
.pay .state[data-status=PAYMENT_STATUS_FAILED]{color:#c92a2a}
.pay a{align-self:flex-start;border-radius:16px;background:var(--accent);color:#fff;padding:5px 14px;text-decoration:none}
.queue{margin:0;padding:6px 14px;font-size:12px;color:#495057;background:#eef1f6;text-align:center}
.typing{min-height:20px;padding:0 14px;font-size:12px;color:#6c757d;background:#f6f7f9}
.composer{display:flex;gap:8px;align-items:flex-end;padding:10px;border-top:1px solid #e3e5e8;background:#fff}
textarea{flex:1;resize:none;border:1px solid #ced4da;border-radius:18px;padding:8px 12px;max-height:120px;background:#fff;min-height:38px}
.send{width:38px;height:38px;border:0;border-radius:50%;background:var(--accent);color:#fff;cursor:pointer;padding:0;
  display:flex;align-items:center;justify-content:center}
.send svg{width:20px;height:20px;fill:currentColor}
.sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
@media (max-width:520px){
  .panel,.left .panel{inset:0;width:auto;height:auto;border-radius:0}
  .open .launcher{display:none}
}`;
  }

  // ---- rendering ----

  /** @param {Message | Pending} m */
  function keyOf(m) {
    return 'seq' in m && m.seq ? 's' + m.seq : 'c' + m.client_message_id;
  }

  /** @param {string} url */
  function safeUrl(url) {
    try {
      const u = new URL(url);
      return u.protocol === 'https:' || u.protocol === 'http:' ? u.href : '';
    } catch (_) {
      return '';
    }
  }

  /**
   * @param {keyof HTMLElementTagNameMap} tag
   * @param {string} [className]
   * @param {string} [text]
   */
  function el(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text) e.textContent = text;
    return e;
  }

  /** @param {number} bytes */
  function size(bytes) {
    return bytes >= 1048576 ? (bytes / 1048576).toFixed(1) + ' MB' : bytes >= 1024 ? Math.round(bytes / 1024) + ' KB' : bytes + ' B';
  }

  /** @param {Content} c @param {HTMLElement} bubble */
  function renderContent(c, bubble) {
    if (c.text != null) bubble.textContent = c.text;
    else if (c.reply) {
      bubble.append(quote(Number(c.reply.to_seq)), c.reply.text);
    } else if (c.attachment) {
      const a = c.attachment;
      const url = safeUrl(a.url);
      const name = a.file_name || 'file';
      // The thumbnail (base64 in JSON) shows until the file itself loads,
      // or instead of it for files that are not images.
      const thumb = a.thumbnail && /^[A-Za-z0-9+/=]+$/.test(a.thumbnail) ? 'data:image/png;base64,' + a.thumbnail : '';
      const image = /^image\//.test(a.mime_type || '') && url;
      if (image || thumb) {
        const img = /** @type {HTMLImageElement} */ (el('img'));
        img.src = image || thumb;
        if (image && thumb) img.style.background = `center/cover url("${thumb}")`;
        img.alt = name;
        img.loading = 'lazy';
        img.addEventListener('load', scrollDown);
        bubble.append(img);
      }
      const link = /** @type {HTMLAnchorElement} */ (el('a', '', name + (a.size_bytes ? ` (${size(Number(a.size_bytes))})` : '')));
      if (url) link.href = url;
      link.target = '_blank';
      link.rel = 'noopener noreferrer';
      link.download = name;
      bubble.append(link);
    } else if (c.quick_replies || c.template) {
      const q = c.quick_replies;
      const t = c.template;
      bubble.append((q || t || { text: '' }).text);
      const choices = el('div', 'choices' + (q ? ' qr' : ''));
      for (const r of q ? q.replies || [] : []) {
        choices.append(choice(r.title, r.payload));
      }
      for (const b of t ? t.buttons || [] : []) {
        const url = b.open_url && safeUrl(b.open_url.url);
        if (url) {
          const a = /** @type {HTMLAnchorElement} */ (el('a', '', b.title));
          a.href = url;
          a.target = '_blank';
          a.rel = 'noopener noreferrer';
          choices.append(a);
        } else if (b.postback) choices.append(choice(b.title, b.postback.payload));
      }
      bubble.append(choices);
    } else if (c.postback) bubble.textContent = c.postback.title;
    else if (c.form) renderForm(c.form, bubble);
    else if (c.payment_request) renderPayment(c.payment_request, bubble);
    else if (c.form_reply) {
      const values = c.form_reply.values || {};
      bubble.textContent = Object.keys(values).sort().map((k) => `${k}: ${values[k]}`).join('\n');
    }
  }

  /**
   * The message a reply quotes, in a line above it: its words if the widget
   * has it, else only that it is an earlier message.
   * @param {number} seq
   */
  function quote(seq) {
    const m = messages.get(seq);
    /** @type {any} */
    const c = m ? m.content : {};
    const words = c.text || (c.reply || c.quick_replies || c.template || {}).text || (c.postback || {}).title || (c.attachment || {}).file_name;
    const q = el('blockquote', 'quote', words || 'an earlier message');
    q.dataset.seq = String(seq);
    return q;
  }

  /** What a form field's value must look like; the server's rules. @type {Record<string, RegExp>} */
  const FIELD_PATTERNS = {
    FORM_FIELD_KIND_EMAIL: /^[^\s@]+@[^\s@.]+(\.[^\s@.]+)+$/,
    FORM_FIELD_KIND_PHONE: /^(?=(?:\D*\d){6,20}\D*$)[\d +\-().]+$/,
    FORM_FIELD_KIND_RATING: /^[1-5]$/,
  };
  const FIELD_TYPES = { FORM_FIELD_KIND_EMAIL: 'email', FORM_FIELD_KIND_PHONE: 'tel' };

  /**
   * A form the visitor fills in: each field checked against its kind and
   * whether it is required before the answer goes out as a form reply.
   * @param {Form} form @param {HTMLElement} bubble
   */
  function renderForm(form, bubble) {
    bubble.append(form.text);
    const f = /** @type {HTMLFormElement} */ (el('form', 'form'));
    f.noValidate = true;
    f.dataset.form = form.form_id;
    /** @type {[FormField, HTMLInputElement][]} */
    const inputs = [];
    for (const field of form.fields || []) {
      // A rating is five star buttons, not a labelled input: a label
      // would pass its clicks to the first star.
      const rating = field.kind === 'FORM_FIELD_KIND_RATING';
      const label = el(rating ? 'div' : 'label', rating ? 'rating' : '', field.label + (field.required ? ' *' : ''));
      const input = /** @type {HTMLInputElement} */ (el('input'));
      input.name = field.name;
      input.type = rating ? 'hidden' : FIELD_TYPES[/** @type {keyof typeof FIELD_TYPES} */ (field.kind || '')] || 'text';
      input.required = !!field.required;
      label.append(input);
      if (rating) label.append(stars(field, input));
      f.append(label);
      inputs.push([field, input]);
    }
    const error = el('p', 'form-error');
    error.setAttribute('role', 'alert');
    const button = /** @type {HTMLButtonElement} */ (el('button', '', 'Send'));
    button.type = 'submit';
    f.append(error, button);
    f.addEventListener('submit', (e) => {
      e.preventDefault();
      /** @type {Record<string, string>} */
      const values = {};
      for (const [field, input] of inputs) {
        const value = input.value.trim();
        const pattern = FIELD_PATTERNS[field.kind || ''];
        const wrong = value ? pattern && !pattern.test(value) : field.required;
        input.setAttribute('aria-invalid', String(!!wrong));
        if (wrong) {
          error.textContent = value ? `Please check ${field.label}.` : `${field.label} is required.`;
          const star = input.type === 'hidden' ? input.parentElement?.querySelector('button') : null;
          (star || input).focus();
          return;
        }
        if (value) values[field.name] = value;
      }
      error.textContent = '';
      for (const [, input] of inputs) input.disabled = true;
      button.disabled = true;
      submit({ form_reply: { form_id: form.form_id, values } });
    });
    bubble.append(f);
  }

  /**
   * Five star buttons that set a rating field's value, 1 to 5. Each is a
   * button, so Tab reaches it and Enter or Space chooses it; the chosen one
   * is pressed (`aria-pressed`) and the stars up to it are lit.
   * @param {FormField} field @param {HTMLInputElement} input
   */
  function stars(field, input) {
    const group = el('span', 'stars');
    group.setAttribute('role', 'group');
    group.setAttribute('aria-label', field.label);
    /** @type {HTMLButtonElement[]} */
    const buttons = [];
    for (let n = 1; n <= 5; n++) {
      const star = /** @type {HTMLButtonElement} */ (el('button', 'star', '\u2605'));
      star.type = 'button';
      star.setAttribute('aria-label', n === 1 ? '1 star' : `${n} stars`);
      star.setAttribute('aria-pressed', 'false');
      star.addEventListener('click', () => {
        input.value = String(n);
        buttons.forEach((b, i) => {
          b.classList.toggle('lit', i < n);
          b.setAttribute('aria-pressed', String(i === n - 1));
        });
      });
      buttons.push(star);
      group.append(star);
    }
    return group;
  }

  /** Payments' statuses as their newest update left them, by payment id. @type {Map<string, string>} */
  const paymentStatus = new Map();
  /** What the visitor is told of a payment's status. @type {Record<string, string>} */
  const PAYMENT_LINES = {
    PAYMENT_STATUS_PENDING: 'Waiting for payment',
    PAYMENT_STATUS_PAID: 'Paid',
    PAYMENT_STATUS_FAILED: 'Payment failed',
    PAYMENT_STATUS_EXPIRED: 'Expired',
  };

  /**
   * An amount in a currency's minor unit (cents), as the visitor's locale
   * writes money.
   * @param {string | number | undefined} minor @param {string} currency
   */
  function money(minor, currency) {
    try {
      const format = new Intl.NumberFormat(undefined, { style: 'currency', currency: currency.toUpperCase() });
      return format.format(Number(minor || 0) / 10 ** (format.resolvedOptions().maximumFractionDigits || 0));
    } catch (_) {
      return `${minor} ${currency}`;
    }
  }

  /**
   * A payment request: what it is for, its lines and total, its status,
   * and while it is pending a button that opens the checkout page.
   * @param {PaymentRequest} p @param {HTMLElement} bubble
   */
  function renderPayment(p, bubble) {
    const currency = p.currency || 'usd';
    const card = el('div', 'pay');
    card.dataset.payment = p.payment_id;
    card.append(el('strong', '', p.description || 'Payment'));
    const items = el('ul');
    for (const item of p.line_items || []) {
      const li = el('li');
      li.append(el('span', '', `${item.quantity || 1} × ${item.name}`), el('span', '', money(Number(item.unit_amount || 0) * Number(item.quantity || 1), currency)));
      items.append(li);
    }
    const total = el('div', 'total');
    total.append(el('span', '', 'Total'), el('span', '', money(p.amount, currency)));
    const state = el('span', 'state');
    const url = safeUrl(p.checkout_url || '');
    const pay = /** @type {HTMLAnchorElement} */ (el('a', '', 'Pay ' + money(p.amount, currency)));
    if (url) pay.href = url;
    pay.target = '_blank';
    pay.rel = 'noopener noreferrer';
    card.append(items, total, state, pay);
    bubble.append(card);
    paymentState(card, paymentStatus.get(p.payment_id) || p.status || 'PAYMENT_STATUS_PENDING');
  }

  /** Shows a payment card's status; the Pay button only while pending. @param {Element} card @param {string} status */
  function paymentState(card, status) {
    const state = /** @type {HTMLElement} */ (card.querySelector('.state'));
    state.dataset.status = status;
    state.textContent = PAYMENT_LINES[status] || '';
    /** @type {HTMLElement} */ (card.querySelector('a')).hidden = status !== 'PAYMENT_STATUS_PENDING';
  }

  /**
   * A payment's new status: shown on its request, never as a message of
   * its own. Updates come in seq order, so the newest wins.
   * @param {{ payment_id: string, status?: string }} u
   */
  function showPaymentUpdate(u) {
    const status = u.status || 'PAYMENT_STATUS_PENDING';
    paymentStatus.set(u.payment_id, status);
    for (const card of list.querySelectorAll(`[data-payment="${CSS.escape(u.payment_id)}"]`)) paymentState(card, status);
  }

  /** @param {string} label @param {string} payload */
  function choice(label, payload) {
    const b = /** @type {HTMLButtonElement} */ (el('button', '', label));
    b.type = 'button';
    b.dataset.payload = payload;
    b.addEventListener('click', () => {
      submit({ postback: { title: label, payload } });
      input.focus();
    });
    return b;
  }

  /** @param {Message | Pending} m */
  function senderOf(m) {
    return 'sender_id' in m ? m.sender_id : m.user_id;
  }

  /**
   * Inserts or replaces one message in the list, in seq order; messages not
   * stored yet stay at the end in the order they were written.
   * @param {Message | Pending} m
   */
  function show(m) {
    const stored = 'seq' in m && m.seq > 0;
    if (m.content.activity) return showActivity(/** @type {Message} */ (m));
    if (m.content.payment_update) return showPaymentUpdate(m.content.payment_update);
    const mine = isMine(senderOf(m));
    const li = /** @type {HTMLLIElement} */ (el('li', 'msg' + (mine ? ' mine' : '')));
    li.dataset.key = keyOf(m);
    if (m.client_message_id) li.dataset.cid = m.client_message_id;
    if (stored) li.dataset.seq = String(/** @type {Message} */ (m).seq);
    li.dataset.sender = senderOf(m);
    if (!mine) li.append(el('span', 'who', senderOf(m)));
    const bubble = el('div', 'bubble');
    renderContent(m.content, bubble);
    if ('sent_at' in m && m.sent_at) bubble.title = new Date(m.sent_at).toLocaleString();
    li.append(bubble);
    if (mine) li.append(el('span', 'meta'));
    const old =
      (m.client_message_id && mine && list.querySelector(`[data-cid="${CSS.escape(m.client_message_id)}"]`)) ||
      list.querySelector(`[data-key="${CSS.escape(keyOf(m))}"]`);
    if (old) old.remove();
    const seq = stored ? /** @type {Message} */ (m).seq : Infinity;
    const next = Array.from(list.children).find((e) => Number(/** @type {HTMLElement} */ (e).dataset.seq || Infinity) > seq);
    list.insertBefore(li, next || null);
    // A who-label only where the sender changes.
    for (const item of list.children) {
      const who = item.querySelector('.who');
      const prev = /** @type {HTMLElement | null} */ (item.previousElementSibling);
      if (who) /** @type {HTMLElement} */ (who).hidden = !!prev && prev.dataset.sender === /** @type {HTMLElement} */ (item).dataset.sender;
    }
    // A form the visitor has answered stays answered, whichever of the
    // two shows first (history comes in either order).
    const reply = m.content.form_reply;
    if (reply && mine) {
      li.dataset.answers = reply.form_id;
      answered(reply.form_id);
    }
    const form = m.content.form;
    if (form && list.querySelector(`[data-answers="${CSS.escape(form.form_id)}"]`)) answered(form.form_id);
    refreshMeta();
    scrollDown();
  }

  /** Disables the forms with this id: the visitor has answered. @param {string} formId */
  function answered(formId) {
    for (const f of list.querySelectorAll(`form.form[data-form="${CSS.escape(formId)}"]`)) {
      for (const control of /** @type {HTMLFormElement} */ (f).elements) /** @type {HTMLInputElement} */ (control).disabled = true;
    }
  }

  /** What the visitor is told of a conversation's status. @type {Record<string, string>} */
  const STATUS_LINES = {
    CONVERSATION_STATUS_OPEN: 'Conversation reopened',
    CONVERSATION_STATUS_PENDING: 'Waiting for your reply',
    CONVERSATION_STATUS_RESOLVED: 'Conversation resolved',
    CONVERSATION_STATUS_CLOSED: 'Conversation closed',
  };

  /**
   * What the visitor is told of a lifecycle change: its status, or who
   * answers. Tags and team are the business's, so a change of only those
   * says nothing.
   * @param {Lifecycle} before @param {Lifecycle} after
   */
  function activityLine(before, after) {
    if (after.status !== before.status) return STATUS_LINES[after.status] || '';
    if (after.assignee && after.assignee !== before.assignee) return `${after.assignee} joined the conversation`;
    if (after.owner !== before.owner) return after.owner === 'THREAD_OWNER_INBOX' ? 'A person has joined the conversation' : '';
    if (after.control_requested && !before.control_requested) return 'Asking for a person…';
    return '';
  }

  /** @typedef {{ status: string, owner: string, control_requested: boolean, assignee: string }} Lifecycle */
  /** @param {Content['activity']} [l] @returns {Lifecycle} */
  function lifecycleOf(l) {
    return {
      status: (l && l.status) || 'CONVERSATION_STATUS_OPEN',
      owner: (l && l.owner) || 'THREAD_OWNER_BOT',
      control_requested: !!(l && l.control_requested),
      assignee: (l && l.assignee_id) || '',
    };
  }

  /**
   * A lifecycle change, as a line between the messages, against the
   * change before it.
   * @param {Message} m
   */
  function showActivity(m) {
    const after = lifecycleOf(m.content.activity);
    const earlier = Array.from(list.querySelectorAll('[data-lifecycle]')).filter((e) => Number(/** @type {HTMLElement} */ (e).dataset.seq) < m.seq).pop();
    const before = earlier ? JSON.parse(/** @type {HTMLElement} */ (earlier).dataset.lifecycle || '{}') : lifecycleOf();
    const li = /** @type {HTMLLIElement} */ (el('li', 'msg activity', activityLine(before, after)));
    li.dataset.key = keyOf(m);
    li.dataset.seq = String(m.seq);
    li.dataset.lifecycle = JSON.stringify(after);
    li.hidden = !li.textContent;
    list.querySelector(`[data-key="${CSS.escape(keyOf(m))}"]`)?.remove();
    const next = Array.from(list.children).find((e) => Number(/** @type {HTMLElement} */ (e).dataset.seq || Infinity) > m.seq);
    list.insertBefore(li, next || null);
    // Nobody waits once the newest lifecycle has an assignee or is not open.
    const newest = !list.querySelector(`[data-lifecycle][data-seq="${m.seq}"] ~ [data-lifecycle]`);
    if (newest && (after.assignee || after.status !== 'CONVERSATION_STATUS_OPEN')) queueLine.hidden = true;
    else if (newest) askPlace();
    scrollDown();
  }

  /**
   * Asks the desk, once per connection, to tell the visitor's place again
   * while the newest lifecycle waits for a person: places are signals,
   * so a reload or a reconnect has none until the queue moves.
   */
  function askPlace() {
    const newest = /** @type {HTMLElement | null} */ (Array.from(list.querySelectorAll('[data-lifecycle]')).pop() || null);
    const l = newest ? JSON.parse(newest.dataset.lifecycle || '{}') : null;
    const waits = l && !l.assignee && l.status === 'CONVERSATION_STATUS_OPEN' && (l.owner === 'THREAD_OWNER_INBOX' || l.control_requested);
    if (!online || placeAsked || !waits || !auth) return;
    placeAsked = true;
    send({ desk: { client_call_id: 'place-' + Date.now(), tell_place: { conversation_id: auth.conversationId } } });
  }

  /** Status under the visitor's own messages: sending, sent, read, failed. */
  function refreshMeta() {
    const pending = new Set(outbox().map((p) => p.client_message_id));
    const mine = /** @type {HTMLElement[]} */ (Array.from(list.querySelectorAll('.mine:not(.failed)')));
    const stored = mine.filter((li) => li.dataset.seq);
    const last = stored[stored.length - 1];
    for (const li of mine) {
      const meta = /** @type {HTMLElement} */ (li.querySelector('.meta'));
      if (li === last) meta.textContent = Number(li.dataset.seq) <= othersReadSeq ? 'Read' : 'Sent';
      else if (li.dataset.seq || !pending.has(li.dataset.cid || '')) meta.textContent = '';
      else meta.textContent = online ? 'Sending…' : 'Waiting for network…';
    }
  }

  function scrollDown() {
    log.scrollTop = log.scrollHeight;
  }

  function unread() {
    let n = 0;
    for (const m of messages.values()) if (!isMine(m.sender_id) && !m.content.activity && !m.content.payment_update && m.seq > readSeq) n++;
    return n;
  }

  function refreshBadge() {
    const n = isOpen ? 0 : unread();
    badge.textContent = n > 99 ? '99+' : String(n);
    badge.hidden = n === 0;
    launcher.setAttribute('aria-label', isOpen ? 'Close chat' : n ? `Open chat, ${n} unread` : 'Open chat');
  }

  function refreshStatus() {
    statusLine.textContent = online ? '' : navigator.onLine ? 'Connecting…' : 'Offline';
  }

  /**
   * The visitor's place in the queue for a person, as the desk last told
   * it; hidden once somebody is assigned (`showActivity`).
   * While the team is closed, the line says when it opens instead of a wait.
   * @param {{ ahead?: number, estimated_wait_seconds?: number }} p
   * @param {string} [opensAt]
   */
  function showQueue(p, opensAt) {
    const ahead = Number(p.ahead || 0);
    const seconds = Number(p.estimated_wait_seconds || 0);
    const opens = opensAt && Date.parse(opensAt);
    const when = opens
      ? new Date(opens).toLocaleString([], { weekday: 'short', hour: 'numeric', minute: '2-digit' })
      : '';
    const wait = seconds ? `about ${Math.max(1, Math.round(seconds / 60))} min` : '';
    queueLine.textContent = when
      ? `We're closed now and open ${when}; ${ahead ? `${ahead} ahead of you` : "you're first in line"}`
      : ahead
        ? `${ahead} ${ahead > 1 ? 'people' : 'person'} ahead of you${wait ? ' · ' + wait : ''}`
        : `You're next in line${wait ? ' — an agent will be with you in ' + wait : ''}`;
    queueLine.hidden = false;
  }

  function refreshTyping() {
    const who = Array.from(typing.keys());
    typingLine.textContent = who.length ? `${who.join(', ')} ${who.length > 1 ? 'are' : 'is'} typing…` : '';
  }

  // ---- messages ----

  function cacheKey() {
    return auth ? `messages:${auth.userId}:${auth.conversationId}` : '';
  }

  /** @param {Message} m */
  function accept(m) {
    if (!auth || m.conversation_id !== auth.conversationId || messages.has(m.seq)) return;
    messages.set(m.seq, m);
    const mine = isMine(m.sender_id);
    if (mine && m.client_message_id) settle(m.client_message_id);
    show(m);
    // Kept for the next page load, once a burst (a backlog) is over.
    clearTimeout(cacheTimer);
    const key = cacheKey();
    const kept = messages;
    cacheTimer = win.setTimeout(() => {
      save(key, JSON.stringify(Array.from(kept.values()).sort((a, b) => a.seq - b.seq).slice(-CACHE_LIMIT)));
    }, 300);
    if (!mine) {
      typing.delete(m.sender_id);
      refreshTyping();
    }
    markRead();
    refreshBadge();
  }

  /** The outbox entry is done with: stored, or refused for good. @param {string} id */
  function settle(id) {
    inFlight.delete(id);
    saveOutbox(outbox().filter((p) => p.client_message_id !== id));
  }

  /** @param {Content} content */
  function submit(content) {
    if (!auth) return;
    /** @type {Pending} */
    const p = {
      conversation_id: auth.conversationId,
      client_message_id: uuid(),
      content,
      user_id: auth.userId,
    };
    // Kept before it is sent: a reload or a drop cannot lose it.
    saveOutbox(outbox().concat(p));
    show(p);
    flush();
    stopTyping();
  }

  /** Sends what the outbox holds that this connection has not sent yet. */
  function flush() {
    if (!online || !auth) return;
    for (const p of outbox()) {
      if (p.user_id !== auth.userId || inFlight.has(p.client_message_id)) continue;
      inFlight.add(p.client_message_id);
      send({ send: { conversation_id: p.conversation_id, client_message_id: p.client_message_id, content: p.content } });
    }
    refreshMeta();
  }

  function markRead() {
    if (!isOpen || !auth || !online || document.hidden) return;
    let top = 0;
    for (const m of messages.values()) if (m.seq > top) top = m.seq;
    if (top > readSeq) {
      readSeq = top;
      save(`read:${auth.userId}:${auth.conversationId}`, String(readSeq));
      send({ read: { conversation_id: auth.conversationId, seq: String(top) } });
    }
    refreshBadge();
  }

  function noteTyping() {
    if (!auth || !online) return;
    clearTimeout(typingStopTimer);
    typingStopTimer = win.setTimeout(stopTyping, TYPING_IDLE_MS);
    if (Date.now() - typingSentAt < TYPING_REPEAT_MS) return;
    typingSentAt = Date.now();
    send({ typing: { conversation_id: auth.conversationId, active: true } });
  }

  function stopTyping() {
    clearTimeout(typingStopTimer);
    if (!typingSentAt) return;
    typingSentAt = 0;
    if (auth && online) send({ typing: { conversation_id: auth.conversationId, active: false } });
  }

  // ---- the connection ----

  /** @param {object} frame */
  function send(frame) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame));
  }

  /** @param {string} token */
  function expiry(token) {
    try {
      const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      return Number(JSON.parse(atob(part)).exp) || 0;
    } catch (_) {
      return 0;
    }
  }

  /** Asks the business's token endpoint who the visitor is. */
  async function fetchToken() {
    const response = await fetch(tokenUrl, {
      method: 'POST',
      credentials: 'include',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ guestId: load('guest') || '' }),
    });
    if (!response.ok) throw new Error('token endpoint answered ' + response.status);
    const body = await response.json();
    if (!body.token || !body.userId || !body.conversationId) throw new Error('token endpoint answer is incomplete');
    if (body.guestId) save('guest', body.guestId);
    return /** @type {Auth} */ ({ ...body, exp: expiry(body.token) });
  }

  /** Switches to the identity and conversation `next` names. @param {Auth} next */
  function adopt(next) {
    const same = auth && auth.userId === next.userId && auth.conversationId === next.conversationId;
    auth = next;
    if (same) return;
    messages = new Map();
    list.textContent = '';
    queueLine.hidden = true;
    cursor = Number(load('cursor:' + auth.userId) || 0);
    readSeq = Number(load(`read:${auth.userId}:${auth.conversationId}`) || 0);
    othersReadSeq = Number(load(`seen:${auth.userId}:${auth.conversationId}`) || 0);
    for (const m of loadJson(cacheKey(), /** @type {Message[]} */ ([]))) {
      messages.set(m.seq, m);
      show(m);
    }
    for (const p of outbox()) if (p.user_id === auth.userId) show(p);
    refreshBadge();
  }

  function connect() {
    clearTimeout(retryTimer);
    if (ws || !tokenUrl) return;
    const mine = ++epoch;
    const expired = !auth || (auth.exp && auth.exp * 1000 < Date.now() + 60000);
    (expired ? fetchToken() : Promise.resolve(/** @type {Auth} */ (auth))).then(
      (next) => {
        if (mine !== epoch || ws) return;
        adopt(next);
        open(next);
      },
      (e) => {
        if (mine !== epoch) return;
        console.warn('natter: ' + e.message);
        retry();
      },
    );
  }

  /** @param {Auth} a */
  function open(a) {
    const sock = new WebSocket(gatewayUrl, PROTOCOL);
    ws = sock;
    sock.onopen = () => {
      send({ hello: { token: a.token, device_id: deviceId, cursor: String(cursor), device_label: 'web' } });
      ping();
    };
    sock.onmessage = (event) => {
      let frame;
      try {
        frame = snake(JSON.parse(String(event.data)));
      } catch (_) {
        return;
      }
      alive();
      onFrame(frame);
    };
    sock.onclose = (event) => {
      if (ws !== sock) return;
      dropped();
      // A bad or expired token: ask the business for a new one.
      if (event.code === 1008 && /TOKEN/.test(event.reason)) auth = null;
      retry();
    };
  }

  function dropped() {
    ws = null;
    online = false;
    inFlight = new Set();
    clearTimeout(pingTimer);
    clearTimeout(pongTimer);
    typing.clear();
    refreshTyping();
    refreshStatus();
    refreshMeta();
  }

  function retry() {
    clearTimeout(retryTimer);
    const ceiling = Math.min(30000, 500 * 2 ** Math.min(attempt++, 6));
    retryTimer = win.setTimeout(connect, ceiling / 2 + Math.random() * (ceiling / 2));
  }

  /** Ends the connection now, for a reconnect or for good. */
  function hangUp() {
    const sock = ws;
    if (!sock) return;
    dropped();
    sock.onclose = null;
    sock.close(1000);
  }

  function ping() {
    clearTimeout(pingTimer);
    pingTimer = win.setTimeout(() => {
      send({ ping: { nonce: String(Date.now()) } });
      pongTimer = win.setTimeout(() => {
        // No answer: the connection is dead though nobody said so.
        hangUp();
        retry();
      }, PONG_TIMEOUT_MS);
    }, PING_MS);
  }

  /** Anything from the server proves the connection works. */
  function alive() {
    clearTimeout(pongTimer);
    ping();
  }

  /** @param {any} f */
  function onFrame(f) {
    if (!auth) return;
    if (f.welcome) {
      online = true;
      attempt = 0;
      cursor = Number(f.welcome.cursor || 0);
      refreshStatus();
      let top = 0;
      for (const m of messages.values()) if (m.seq > top) top = m.seq;
      send({ watch: { conversation_id: auth.conversationId, after_seq: String(top) } });
      flush();
      markRead();
      placeAsked = false;
      askPlace();
    } else if (f.update) {
      const event = f.update.event || {};
      if (event.message) accept(toMessage(event.message));
      else if (event.read_marker) onRead(event.read_marker);
      cursor = Number(f.update.cursor || cursor);
      save('cursor:' + auth.userId, String(cursor));
      if (++unacked >= ACK_EVERY) ack();
      else if (!ackTimer) ackTimer = win.setTimeout(ack, ACK_DELAY_MS);
    } else if (f.message) {
      accept(toMessage(f.message));
    } else if (f.send_ack) {
      settle(f.send_ack.client_message_id);
      refreshMeta();
    } else if (f.typing) {
      const t = f.typing;
      if (t.conversation_id !== auth.conversationId || isMine(t.user_id)) return;
      clearTimeout(typing.get(t.user_id));
      if (t.active) typing.set(t.user_id, win.setTimeout(() => (typing.delete(t.user_id), refreshTyping()), TYPING_SHOWN_MS));
      else typing.delete(t.user_id);
      refreshTyping();
    } else if (f.desk_signal) {
      const queued = f.desk_signal.queued;
      if (queued && queued.conversation_id === auth.conversationId) showQueue(queued.position || {}, queued.opens_at);
    } else if (f.resync_required) {
      // Too far behind for the update log: the watch below refetches the
      // conversation, and the log continues from the server's position.
      cursor = Number(f.resync_required.cursor || 0);
      save('cursor:' + auth.userId, String(cursor));
      send({ watch: { conversation_id: auth.conversationId, after_seq: '0' } });
    } else if (f.error) {
      onError(f.error);
    }
  }

  function ack() {
    clearTimeout(ackTimer);
    ackTimer = 0;
    unacked = 0;
    send({ ack: { cursor: String(cursor) } });
  }

  /** @param {any} m @returns {Message} */
  function toMessage(m) {
    return { ...m, seq: Number(m.seq || 0), content: m.content || {} };
  }

  /** @param {any} r */
  function onRead(r) {
    if (!auth || r.conversation_id !== auth.conversationId) return;
    const seq = Number(r.seq || 0);
    if (isMine(r.user_id)) {
      // Read on another device of the visitor's.
      if (r.user_id === auth.userId && seq > readSeq) {
        readSeq = seq;
        save(`read:${auth.userId}:${auth.conversationId}`, String(seq));
        refreshBadge();
      }
    } else if (seq > othersReadSeq) {
      othersReadSeq = seq;
      save(`seen:${auth.userId}:${auth.conversationId}`, String(seq));
      refreshMeta();
    }
  }

  /** @param {any} e */
  function onError(e) {
    const id = e.client_message_id;
    if (!id) {
      console.warn('natter: ' + (e.reason || e.code) + ': ' + e.message);
      return;
    }
    // A place not told now is told when the queue next moves.
    if (id.startsWith('place-')) return;
    inFlight.delete(id);
    // UNAVAILABLE (14) and DEADLINE_EXCEEDED (4): keep it and send it again
    // a little later with the same id.
    if (e.code === 14 || e.code === 4) {
      win.setTimeout(flush, 2000);
      return;
    }
    settle(id);
    const li = list.querySelector(`[data-cid="${CSS.escape(id)}"]`);
    if (li) {
      li.classList.add('failed');
      /** @type {HTMLElement} */ (li.querySelector('.meta')).textContent = 'Not sent';
    }
  }

  // ---- opening, closing, typing ----

  /** @param {boolean} open */
  function setOpen(open) {
    isOpen = open;
    panel.hidden = !open;
    (/** @type {HTMLElement} */ ($('.root'))).classList.toggle('open', open);
    launcher.setAttribute('aria-expanded', String(open));
    refreshBadge();
    if (open) {
      scrollDown();
      // On touch screens a focused field pops up the keyboard over the
      // conversation; focus the dialog there instead.
      (matchMedia('(pointer: coarse)').matches ? panel : input).focus();
      markRead();
    }
  }

  launcher.addEventListener('click', () => {
    setOpen(!isOpen);
    if (!isOpen) launcher.focus();
  });
  $('.close').addEventListener('click', () => {
    setOpen(false);
    launcher.focus();
  });
  root.addEventListener('keydown', (event) => {
    const e = /** @type {KeyboardEvent} */ (event);
    if (e.key === 'Escape' && isOpen) {
      setOpen(false);
      launcher.focus();
    }
  });
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || !auth) return;
    input.value = '';
    grow();
    submit({ text });
  });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  input.addEventListener('input', () => {
    grow();
    noteTyping();
  });
  /** The composer grows with what is typed, up to its CSS max-height. */
  function grow() {
    input.style.height = 'auto';
    input.style.height = input.scrollHeight + 2 + 'px';
  }
  document.addEventListener('visibilitychange', markRead);
  window.addEventListener('online', () => {
    attempt = 0;
    refreshStatus();
    connect();
  });
  window.addEventListener('offline', () => {
    // Nothing will get through: hang up, keep what is typed in the outbox,
    // and reconnect when the network is back.
    hangUp();
    retry();
    refreshStatus();
  });
  // Another tab of the same visitor may have sent what the outbox held.
  window.addEventListener('storage', (e) => {
    if (e.key === prefix + 'outbox') refreshMeta();
  });

  const api = {
    /** Opens the chat panel. */
    open() {
      setOpen(true);
    },
    /** Closes the chat panel. */
    close() {
      setOpen(false);
    },
    /**
     * Asks the token endpoint again, after the page signed the visitor in
     * or out, and continues as whoever it names now.
     */
    identify() {
      epoch++;
      hangUp();
      auth = null;
      attempt = 0;
      connect();
    },
    /** Who and where the widget is now. */
    state() {
      return {
        userId: auth ? auth.userId : '',
        conversationId: auth ? auth.conversationId : '',
        online,
        cursor,
      };
    },
  };
  win.Natter = api;

  refreshStatus();
  refreshBadge();
  (document.body || document.documentElement).append(host);
  connect();
})();
