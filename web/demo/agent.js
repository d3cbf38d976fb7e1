// @ts-check
/**
 * The demo's agent console: a person at the business's support desk.
 *
 * It signs in as one of the demo's agents (a token from the demo's
 * `/agent-token`, `?as=agent-2` for the second) and opens a device session
 * on the gateway's WebSocket; the session is what makes the agent online
 * at the desk. Through the same session it calls the desk (`desk` frames,
 * answered by `desk_answer`) and hears from it (`desk_signal`): offers to
 * accept or decline, and `changed`, after which it asks for the desk again
 * (`get_desk`: the queue, and what each agent holds).
 *
 * Accepting an offer makes the agent a member of the conversation, so its
 * messages come in the agent's update log from then on (caught up from
 * cursor 0 on each load); the open conversation is watched from the first
 * message the console lacks, which brings the history from before the
 * agent joined. Replies go out as `send` frames.
 *
 * Beside the open conversation it shows its customers' contacts
 * (`get_contact`), and typing `/` in the composer offers the canned
 * replies of the agent's teams (`list_teams`).
 */
(function () {
  'use strict';

  /**
   * @typedef {{ seq: number, sender_id: string, client_message_id?: string, sent_at?: string, content: any }} Message
   * @typedef {{ note_id: string, author_id: string, text: string, created_at?: string }} Note
 * @typedef {{ id: string, customers: string[], messages: Map<number, Message>, readSeq: number,
 *   notes: Map<string, Note> | null }} Conversation
   * @typedef {{ agent?: { user_id: string, team_ids?: string[], capacity?: number }, presence?: string,
   *   assigned_conversation_ids?: string[], offered_conversation_ids?: string[] }} AgentDesk
   * @typedef {{ conversation_id: string, team_id?: string, since?: string,
   *   position?: { ahead?: number, estimated_wait_seconds?: number } }} Waiting
   * @typedef {{ waiting?: Waiting[], agents?: AgentDesk[] }} DeskView
   * @typedef {{ shortcut: string, text: string }} CannedReply
   * @typedef {{ team_id: string, name?: string, canned_replies?: CannedReply[] }} Team
   * @typedef {{ user_id: string, name?: string, email?: string, phone?: string, company?: string,
   *   attributes?: Record<string, string>, updated_at?: string }} Contact
   */

  const gatewayMeta = /** @type {HTMLMetaElement} */ (document.querySelector('meta[name="natter-gateway"]'));
  const gateway = gatewayMeta.content;
  const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));
  const status = $('status');
  const notice = $('notice');
  const agentSelect = /** @type {HTMLSelectElement} */ ($('agent'));
  const presenceSelect = /** @type {HTMLSelectElement} */ ($('presence'));
  const offersList = $('offers');
  const queueList = $('queue');
  const log = $('messages');
  const typingLine = $('typing');
  const reply = /** @type {HTMLFormElement} */ ($('reply'));
  const replyText = /** @type {HTMLTextAreaElement} */ ($('reply-text'));
  const quick = /** @type {HTMLFormElement} */ ($('quick'));
  const transfer = /** @type {HTMLFormElement} */ ($('transfer'));
  const transferTo = /** @type {HTMLSelectElement} */ ($('transfer-to'));
  const contactPanel = $('contact');
  const contactDetails = $('contact-details');
  const cannedList = $('canned');
  const asNote = /** @type {HTMLInputElement} */ ($('as-note'));
  const quoting = $('quoting');

  /** @type {Map<string, Conversation>} */
  const conversations = new Map();
  /** @type {string} */
  let me = '';
  /** @type {string} */
  let selected = '';
  /** @type {WebSocket | null} */
  let ws = null;
  let online = false;
  let attempt = 0;
  let cursor = 0;
  let typingSentAt = 0;
  /** @type {Map<string, number>} */
  const typing = new Map();
  const deviceId = localStorage.getItem('natter-agent-device') || 'agent-console-' + crypto.randomUUID();
  localStorage.setItem('natter-agent-device', deviceId);

  /** The desk as `get_desk` last answered. @type {DeskView} */
  let desk = {};
  /** @type {Team[]} */
  let teams = [];
  /** Conversations offered to this agent, with when the offer ends (0: not known). @type {Map<string, number>} */
  const offers = new Map();
  /** Offers signalled since the desk was last asked for: its answer may predate them. */
  let freshOffers = new Set();
  /** Desk calls awaiting their answer, by client call id. @type {Map<string, { resolve: (a: any) => void, reject: (e: any) => void }>} */
  const calls = new Map();
  let deskAsked = false;
  let deskAgain = false;
  /** The conversation just accepted: opened once the agent is a member. */
  let opening = '';
  let noticeTimer = 0;
  /** Customers' contacts as the desk last told, by user id: null when they have none. @type {Map<string, Contact | null>} */
  const contacts = new Map();
  /** Customers whose contact is being asked for. @type {Set<string>} */
  const contactAsked = new Set();
  /** How many times a contact older than the form reply that fills it is asked for again. */
  const CONTACT_RETRIES = 5;
  /** The canned replies the composer offers, and the one Enter picks. @type {CannedReply[]} */
  let cannedOffered = [];
  let cannedActive = 0;
  /** The seq of the message the next reply quotes; 0 for none. */
  let quotedSeq = 0;

  /** Proto maps, whose keys are data. */
  const MAPS = new Set(['values', 'attributes', 'consents']);

  /** @param {any} value @returns {any} */
  function snake(value) {
    if (Array.isArray(value)) return value.map(snake);
    if (!value || typeof value !== 'object') return value;
    /** @type {Record<string, any>} */
    const out = {};
    for (const key of Object.keys(value)) {
      const name = key.replace(/[A-Z]/g, (c) => '_' + c.toLowerCase());
      out[name] = MAPS.has(name) ? value[key] : snake(value[key]);
    }
    return out;
  }

  /** @param {object} frame */
  function send(frame) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame));
  }

  /** @param {string} id @returns {Conversation} */
  function conversation(id) {
    let c = conversations.get(id);
    if (!c) {
      c = { id, customers: [], messages: new Map(), readSeq: 0, notes: null };
      conversations.set(id, c);
    }
    return c;
  }

  async function connect() {
    try {
      // The page's `?as=` names the agent; the demo trusts it.
      const response = await fetch('/agent-token' + location.search);
      if (!response.ok) throw new Error('agent token: ' + response.status);
      const body = await response.json();
      me = body.userId;
      if (!agentSelect.options.length) agentSelect.append(new Option(me));
      open(body.token);
    } catch (e) {
      retry();
    }
  }

  /** @param {string} token */
  function open(token) {
    const sock = new WebSocket(gateway, 'natter.v1.json');
    ws = sock;
    sock.onopen = () => send({ hello: { token, device_id: deviceId, cursor: String(cursor), device_label: 'agent console' } });
    sock.onmessage = (event) => onFrame(snake(JSON.parse(String(event.data))));
    sock.onclose = () => {
      if (ws !== sock) return;
      ws = null;
      online = false;
      presenceSelect.disabled = true;
      for (const call of calls.values()) call.reject(new Error('disconnected'));
      calls.clear();
      status.textContent = 'Reconnecting…';
      retry();
    };
  }

  function retry() {
    const ceiling = Math.min(15000, 500 * 2 ** Math.min(attempt++, 5));
    setTimeout(connect, ceiling / 2 + Math.random() * (ceiling / 2));
  }

  /** @param {any} f */
  function onFrame(f) {
    if (f.welcome) {
      online = true;
      attempt = 0;
      status.textContent = 'Connected';
      presenceSelect.disabled = false;
      // Offers are not kept across sessions: the desk says which stand.
      offers.clear();
      refreshDesk();
      deskCall({ list_teams: {} }).then((a) => {
        teams = a.list_teams.teams || [];
        renderThreadBar();
      }, report);
      if (selected) {
        watch(selected);
        // Asks for what a call cut off by the disconnect did not bring.
        renderContact();
      }
    } else if (f.update) {
      cursor = Number(f.update.cursor || cursor);
      const e = f.update.event || {};
      if (e.membership_change) {
        const m = e.membership_change;
        const c = conversation(m.conversation_id);
        if (m.role === 'ROLE_CUSTOMER' && m.kind !== 'MEMBERSHIP_CHANGE_KIND_LEFT' && !c.customers.includes(m.user_id)) {
          c.customers.push(m.user_id);
          if (c.id === selected) renderContact();
        }
      } else if (e.message) accept(e.message);
      else if (e.read_marker && e.read_marker.user_id === me) {
        const c = conversation(e.read_marker.conversation_id);
        c.readSeq = Math.max(c.readSeq, Number(e.read_marker.seq || 0));
      }
      if (!openAccepted()) renderLists();
      if (cursor % 50 === 0) send({ ack: { cursor: String(cursor) } });
    } else if (f.message) {
      accept(f.message);
      renderLists();
    } else if (f.typing) {
      const t = f.typing;
      clearTimeout(typing.get(t.conversation_id + ' ' + t.user_id));
      if (t.active && t.user_id !== me) {
        typing.set(t.conversation_id + ' ' + t.user_id, setTimeout(() => {
          typing.delete(t.conversation_id + ' ' + t.user_id);
          renderTyping();
        }, 10000));
      } else typing.delete(t.conversation_id + ' ' + t.user_id);
      renderTyping();
    } else if (f.desk_answer) {
      const call = calls.get(f.desk_answer.client_call_id);
      calls.delete(f.desk_answer.client_call_id);
      if (call) call.resolve(f.desk_answer);
    } else if (f.desk_signal) {
      onSignal(f.desk_signal);
    } else if (f.error) {
      const call = calls.get(f.error.client_message_id);
      calls.delete(f.error.client_message_id);
      if (call) call.reject(f.error);
      else console.warn('natter:', f.error.reason || f.error.code, f.error.message);
    }
  }

  // ---- the desk ----

  /**
   * Calls the desk over the session; resolves with the `desk_answer`,
   * rejects with the `error` frame that answers instead.
   * @param {object} call @returns {Promise<any>}
   */
  function deskCall(call) {
    if (!online) return Promise.reject(new Error('not connected'));
    const id = 'desk-' + crypto.randomUUID();
    send({ desk: { client_call_id: id, ...call } });
    return new Promise((resolve, reject) => calls.set(id, { resolve, reject }));
  }

  /** Asks for the desk, once at a time: a request while one is out asks again after it. */
  function refreshDesk() {
    if (deskAsked) {
      deskAgain = true;
      return;
    }
    deskAsked = true;
    freshOffers = new Set();
    deskCall({ get_desk: {} })
      .then((a) => {
        desk = a.get_desk || {};
        const offered = new Set((mine() || {}).offered_conversation_ids || []);
        for (const id of offers.keys()) if (!offered.has(id) && !freshOffers.has(id)) offers.delete(id);
        for (const id of offered) if (!offers.has(id)) offers.set(id, 0);
        renderDesk();
      }, report)
      .finally(() => {
        deskAsked = false;
        if (deskAgain) {
          deskAgain = false;
          refreshDesk();
        }
      });
  }

  /** @param {any} s */
  function onSignal(s) {
    if (s.offered) {
      const id = s.offered.conversation_id;
      offers.set(id, Date.parse(s.offered.until) || 0);
      freshOffers.add(id);
      renderOffers();
    } else if (s.withdrawn_conversation_id) {
      offers.delete(s.withdrawn_conversation_id);
      freshOffers.delete(s.withdrawn_conversation_id);
      renderOffers();
    } else if (s.changed) {
      refreshDesk();
    } else if (s.note) {
      addNotes(s.note.conversation_id, [s.note]);
    }
  }

  // ---- internal notes: the desk's, never sent to the customer ----

  /** @param {string} id @param {Note[]} notes */
  function addNotes(id, notes) {
    const c = conversation(id);
    c.notes = c.notes || new Map();
    for (const n of notes) c.notes.set(n.note_id, n);
    if (id === selected) renderThread();
  }

  /** Asks the desk for a conversation's notes, page by page. @param {string} id @param {string} [token] */
  function loadNotes(id, token = '') {
    deskCall({ list_notes: { conversation_id: id, page_token: token } }).then((a) => {
      const page = a.list_notes || {};
      addNotes(id, page.notes || []);
      if (page.next_page_token) loadNotes(id, page.next_page_token);
    }, report);
  }

  /** This agent on the desk. @returns {AgentDesk | undefined} */
  function mine() {
    return (desk.agents || []).find((a) => a.agent && a.agent.user_id === me);
  }

  /** @param {string} id */
  function isMine(id) {
    return ((mine() || {}).assigned_conversation_ids || []).includes(id);
  }

  /** @param {string} id @param {boolean} take */
  function answerOffer(id, take) {
    offers.delete(id);
    renderOffers();
    deskCall(take ? { accept_offer: { conversation_id: id } } : { decline_offer: { conversation_id: id } }).then(() => {
      if (take) opening = id;
      refreshDesk();
    }, (e) => {
      report(e);
      refreshDesk();
    });
  }

  /**
   * Opens the conversation just accepted once the agent is in it (its
   * update log has something of it), so the watch is allowed.
   * @returns {boolean} whether it did
   */
  function openAccepted() {
    if (!opening || !conversations.has(opening)) return false;
    const id = opening;
    opening = '';
    select(id);
    return true;
  }

  /** Shows what went wrong with a desk call. @param {any} e */
  function report(e) {
    notice.textContent = e.message || String(e);
    notice.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => (notice.hidden = true), 8000);
  }

  presenceSelect.addEventListener('change', () => {
    deskCall({ set_presence: { presence: presenceSelect.value } }).then(refreshDesk, report);
  });
  // ---- the analytics page, in place of the desk ----

  const viewButton = $('view');
  const analytics = $('analytics');
  const analyticsDays = /** @type {HTMLSelectElement} */ ($('analytics-days'));
  const layout = /** @type {HTMLElement} */ (document.querySelector('.layout'));

  function showAnalytics() {
    /** @type {any} */ (window).natterAnalytics.show($('analytics-body'), deskCall, Number(analyticsDays.value)).catch(report);
  }
  viewButton.addEventListener('click', () => {
    const on = analytics.hidden;
    analytics.hidden = !on;
    layout.hidden = on;
    viewButton.setAttribute('aria-pressed', String(on));
    viewButton.textContent = on ? 'Conversations' : 'Analytics';
    if (on) showAnalytics();
  });
  analyticsDays.addEventListener('change', showAnalytics);
  $('analytics-refresh').addEventListener('click', showAnalytics);

  agentSelect.addEventListener('change', () => {
    location.search = '?as=' + encodeURIComponent(agentSelect.value);
  });
  transfer.addEventListener('submit', (e) => {
    e.preventDefault();
    const [kind, id] = transferTo.value.split(':');
    if (!selected || !id) return;
    const to = kind === 'team' ? { team_id: id } : { agent_id: id };
    deskCall({ transfer: { conversation_id: selected, ...to } }).then(refreshDesk, report);
  });

  // ---- rendering ----

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

  /** A conversation's name: its customers, or a visitor and the end of its id. @param {string} id */
  function nameOf(id) {
    const c = conversations.get(id);
    return (c && c.customers.join(', ')) || 'visitor …' + id.slice(-4);
  }

  /** @param {number} seconds */
  function minutes(seconds) {
    return Math.max(1, Math.round(seconds / 60)) + ' min';
  }

  function renderDesk() {
    const self = mine();
    const presence = self && self.presence;
    if (presence === 'AGENT_PRESENCE_ONLINE' || presence === 'AGENT_PRESENCE_AWAY') presenceSelect.value = presence;
    presenceSelect.dataset.presence = presence || '';
    const agents = (desk.agents || []).map((a) => (a.agent ? a.agent.user_id : '')).filter(Boolean);
    if (agents.join() !== Array.from(agentSelect.options, (o) => o.value).join()) {
      agentSelect.textContent = '';
      for (const id of agents) agentSelect.append(new Option(id, id, false, id === me));
    }
    renderOffers();
    renderQueue();
    renderLists();
    renderThreadBar();
    openAccepted();
  }

  function renderOffers() {
    offersList.textContent = '';
    $('offers-box').hidden = !offers.size;
    for (const [id, until] of offers) {
      const li = el('li', 'card');
      li.dataset.offer = id;
      const left = el('span', 'small line');
      left.dataset.until = String(until);
      const accept = el('button', '', 'Accept');
      accept.addEventListener('click', () => answerOffer(id, true));
      const decline = el('button', 'decline', 'Decline');
      decline.addEventListener('click', () => answerOffer(id, false));
      li.append(el('span', 'line', nameOf(id) + ' asks for a person'), left, accept, decline);
      offersList.append(li);
    }
    countDown();
  }

  /** How long each offer has left. */
  function countDown() {
    for (const span of offersList.querySelectorAll('[data-until]')) {
      const until = Number(/** @type {HTMLElement} */ (span).dataset.until);
      const left = Math.round((until - Date.now()) / 1000);
      span.textContent = until && left > 0 ? `answer within ${left} s` : '';
    }
  }
  setInterval(countDown, 1000);

  function renderQueue() {
    const waiting = desk.waiting || [];
    $('queue-title').textContent = `Queue (${waiting.length})`;
    queueList.textContent = '';
    if (!waiting.length) queueList.append(el('li', 'none', 'Nobody is waiting'));
    for (const w of waiting) {
      const p = w.position || {};
      const li = el('li', 'card');
      li.dataset.waiting = w.conversation_id;
      const since = w.since ? Math.max(0, (Date.now() - Date.parse(w.since)) / 1000) : 0;
      const team = teams.find((t) => t.team_id === w.team_id);
      li.append(
        el('span', 'line', `${Number(p.ahead || 0) + 1}. ${nameOf(w.conversation_id)}`),
        el('span', 'small line', `asked ${since < 60 ? 'just now' : minutes(since) + ' ago'} · about ${minutes(Number(p.estimated_wait_seconds || 0))} to go`
          + (team ? ' · ' + (team.name || team.team_id) : '')),
      );
      queueList.append(li);
    }
  }

  /** My conversations, the rest of the team's, and earlier ones (assigned to nobody now). */
  function renderLists() {
    const assigned = new Set();
    for (const a of desk.agents || []) for (const id of a.assigned_conversation_ids || []) assigned.add(id);
    const self = mine();
    fill($('mine'), (self && self.assigned_conversation_ids) || [], 'None yet: accept an offer');
    const team = $('team');
    team.textContent = '';
    for (const a of desk.agents || []) {
      if (!a.agent || a === self) continue;
      const held = a.assigned_conversation_ids || [];
      const load = held.length + (a.offered_conversation_ids || []).length;
      const head = el('li', 'agent');
      head.append(el('span', 'dot ' + (a.presence || '')), a.agent.user_id);
      head.append(el('span', 'small', ` · ${(a.presence || 'AGENT_PRESENCE_OFFLINE').replace('AGENT_PRESENCE_', '').toLowerCase()} · ${load}/${a.agent.capacity || 0}`));
      team.append(head);
      for (const id of held) team.append(conversations.has(id) ? item(id) : el('li', 'none', nameOf(id)));
    }
    const earlier = Array.from(conversations.keys()).filter((id) => !assigned.has(id)).sort().reverse();
    fill($('earlier'), earlier, 'None');
  }

  /** @param {HTMLElement} list @param {string[]} ids @param {string} empty */
  function fill(list, ids, empty) {
    list.textContent = '';
    if (!ids.length) list.append(el('li', 'none', empty));
    for (const id of ids) list.append(item(id));
  }

  /**
   * A conversation to open, with its last message and unread count. One
   * the desk just assigned may not be known yet: it is, once the agent's
   * update log says they joined.
   * @param {string} id
   */
  function item(id) {
    const c = conversations.get(id);
    const li = el('li');
    const button = el('button', 'conversation');
    button.setAttribute('type', 'button');
    button.dataset.conversation = id;
    button.setAttribute('aria-current', String(id === selected));
    const name = el('span', 'name', nameOf(id));
    const last = c && c.messages.get(lastSeq(c));
    name.append(el('span', 'preview', last ? preview(last.content) : ''));
    button.append(name);
    const n = c ? unread(c) : 0;
    if (n) {
      const badge = el('span', 'unread', String(n));
      badge.setAttribute('aria-label', n + ' unread');
      button.append(badge);
    }
    button.addEventListener('click', () => select(id));
    li.append(button);
    return li;
  }

  /** The open conversation's name, state, and where it can be transferred. */
  function renderThreadBar() {
    const c = conversations.get(selected);
    $('thread-bar').hidden = !c;
    if (!c) return;
    $('thread-title').textContent = nameOf(c.id);
    const activities = Array.from(c.messages.values()).filter((m) => m.content.activity).sort((a, b) => a.seq - b.seq);
    const latest = activities[activities.length - 1];
    $('thread-state').textContent = latest ? activityLine(latest.content.activity) : '';
    transfer.hidden = !isMine(c.id);
    const chosen = transferTo.value;
    transferTo.textContent = '';
    for (const a of desk.agents || []) {
      if (a.agent && a.agent.user_id !== me) transferTo.append(new Option(`to ${a.agent.user_id}`, 'agent:' + a.agent.user_id));
    }
    for (const t of teams) transferTo.append(new Option(`to the ${t.name || t.team_id} queue`, 'team:' + t.team_id));
    if (chosen) transferTo.value = chosen;
  }

  /** @param {Conversation} c */
  function lastSeq(c) {
    let top = 0;
    for (const s of c.messages.keys()) if (s > top) top = s;
    return top;
  }

  /**
   * The seq up to which the console has every message. An agent who joined
   * late has none of what came before, so a watch starts here.
   * @param {Conversation} c
   */
  function complete(c) {
    let seq = 0;
    while (c.messages.has(seq + 1)) seq++;
    return seq;
  }

  /** @param {any} m */
  function accept(m) {
    const c = conversation(m.conversation_id);
    const seq = Number(m.seq || 0);
    if (c.messages.has(seq)) return;
    const content = m.content || {};
    c.messages.set(seq, { ...m, seq, content });
    // A request for a person, or an answered form, is the customer's own:
    // how an agent who joined late learns who the customer is.
    const own = (content.activity && content.activity.control_requested) || content.form_reply;
    if (own && !c.customers.includes(m.sender_id)) c.customers.push(m.sender_id);
    // Assignments show as activities; the desk signals no `changed` for them.
    if (content.activity) refreshDesk();
    if (m.conversation_id === selected) {
      if (content.form_reply) loadContact(m.sender_id, Date.parse(m.sent_at || ''));
      renderThread();
      markRead();
    }
  }

  /** @param {Conversation} c */
  function unread(c) {
    let n = 0;
    for (const m of c.messages.values()) if (m.sender_id !== me && !m.content.activity && !m.content.payment_update && m.seq > c.readSeq) n++;
    return n;
  }

  /** @param {any} content */
  function preview(content) {
    if (content.text) return content.text;
    if (content.reply) return '↪ ' + content.reply.text;
    if (content.postback) return '↩ ' + content.postback.title;
    if (content.quick_replies) return content.quick_replies.text;
    if (content.template) return content.template.text;
    if (content.attachment) return '📎 ' + (content.attachment.file_name || 'file');
    if (content.activity) return activityLine(content.activity);
    if (content.form) return '📋 ' + content.form.text;
    if (content.payment_request) return '💳 ' + (content.payment_request.description || 'Payment') + ' · ' + money(content.payment_request.amount, content.payment_request.currency);
    if (content.payment_update) return '💳 ' + (PAYMENT_LINES[content.payment_update.status] || '');
    if (content.form_reply) {
      const values = content.form_reply.values || {};
      return '📋 ' + Object.keys(values).sort().map((k) => k + ': ' + values[k]).join(' · ');
    }
    return '';
  }

  /** A payment's status as the console shows it. @type {Record<string, string>} */
  const PAYMENT_LINES = {
    PAYMENT_STATUS_PENDING: 'Waiting for payment',
    PAYMENT_STATUS_PAID: 'Paid',
    PAYMENT_STATUS_FAILED: 'Payment failed',
    PAYMENT_STATUS_EXPIRED: 'Expired',
  };

  /** Fraction digits of a currency's minor unit (2 for eur, 0 for jpy). @param {string} currency */
  function minorDigits(currency) {
    try {
      return new Intl.NumberFormat('en', { style: 'currency', currency: currency.toUpperCase() }).resolvedOptions().maximumFractionDigits || 0;
    } catch (_) {
      return 2;
    }
  }

  /** An amount in a currency's minor unit, as money. @param {any} minor @param {string} currency */
  function money(minor, currency) {
    const c = (currency || 'usd').toUpperCase();
    try {
      return new Intl.NumberFormat(undefined, { style: 'currency', currency: c }).format(Number(minor || 0) / 10 ** minorDigits(c));
    } catch (_) {
      return minor + ' ' + c;
    }
  }

  /** A payment's status as the newest of its updates left it. @param {Conversation} c @param {any} p */
  function paymentStatusOf(c, p) {
    let status = p.status || 'PAYMENT_STATUS_PENDING';
    for (const m of Array.from(c.messages.values()).sort((a, b) => a.seq - b.seq)) {
      const u = m.content.payment_update;
      if (u && u.payment_id === p.payment_id) status = u.status || status;
    }
    return status;
  }

  /** A payment request as a card: what it is for, its lines, its total and status. @param {Conversation} c @param {any} p */
  function paymentCard(c, p) {
    const card = el('div', 'pay');
    card.dataset.payment = p.payment_id;
    card.append(el('strong', '', '💳 ' + (p.description || 'Payment')));
    for (const item of p.line_items || []) {
      card.append(el('div', 'line', (item.quantity || 1) + ' × ' + item.name + ' · ' + money(Number(item.unit_amount || 0) * Number(item.quantity || 1), p.currency)));
    }
    card.append(el('div', 'total', 'Total ' + money(p.amount, p.currency)));
    const status = paymentStatusOf(c, p);
    const state = el('div', 'state', PAYMENT_LINES[status] || '');
    state.dataset.status = status;
    card.append(state);
    return card;
  }

  /** A lifecycle change as the console shows it: status, then who and where. @param {any} l */
  function activityLine(l) {
    const status = String(l.status || 'CONVERSATION_STATUS_OPEN').replace('CONVERSATION_STATUS_', '').toLowerCase();
    const parts = ['status ' + status];
    if (l.assignee_id) parts.push('assigned to ' + l.assignee_id);
    if (l.team_id) parts.push('team ' + l.team_id);
    if (l.tags && l.tags.length) parts.push('tags ' + l.tags.join(', '));
    if (l.owner !== 'THREAD_OWNER_INBOX') parts.push(l.control_requested ? 'asks for a person' : 'bot answers');
    return '⚑ ' + parts.join(' · ');
  }

  /** @param {string} id */
  function select(id) {
    if (selected && selected !== id) send({ unwatch: { conversation_id: selected } });
    selected = id;
    // Contacts change while nobody looks: asked for afresh on opening.
    contacts.clear();
    quote(0);
    if (!conversation(id).notes) loadNotes(id);
    $('empty').hidden = true;
    log.hidden = reply.hidden = quick.hidden = $('payment').hidden = false;
    watch(id);
    renderThread();
    renderLists();
    renderTyping();
    markRead();
    replyText.focus();
  }

  /** @param {string} id */
  function watch(id) {
    send({ watch: { conversation_id: id, after_seq: String(complete(conversation(id))) } });
  }

  function renderThread() {
    const c = conversations.get(selected);
    if (!c) return;
    renderThreadBar();
    renderContact();
    log.textContent = '';
    // Notes go after the messages sent before them.
    const notes = Array.from((c.notes || new Map()).values()).sort((a, b) => (a.note_id < b.note_id ? -1 : 1));
    const noteLi = (/** @type {Note} */ n) => {
      const li = el('li', 'note');
      li.dataset.note = n.note_id;
      li.append(el('div', 'who', 'Note · ' + n.author_id), el('div', 'bubble', n.text));
      return li;
    };
    for (const m of Array.from(c.messages.values()).sort((a, b) => a.seq - b.seq)) {
      const sent = Date.parse(m.sent_at || '') || 0;
      while (notes.length && (Date.parse(notes[0].created_at || '') || 0) < sent) log.append(noteLi(/** @type {Note} */ (notes.shift())));
      const li = el('li', m.sender_id === me ? 'mine' : '');
      li.dataset.seq = String(m.seq);
      li.dataset.sender = m.sender_id;
      if (m.client_message_id) li.dataset.cid = m.client_message_id;
      const bubble = el('div', 'bubble');
      const content = m.content;
      if (content.activity) {
        bubble.classList.add('activity');
        bubble.textContent = activityLine(content.activity);
      } else if (content.postback) {
        bubble.classList.add('postback');
        li.dataset.payload = content.postback.payload;
        bubble.textContent = '↩ ' + content.postback.title + ' (' + content.postback.payload + ')';
      } else if (content.attachment && /^image\//.test(content.attachment.mime_type || '')) {
        const img = /** @type {HTMLImageElement} */ (el('img'));
        img.src = content.attachment.url;
        img.alt = content.attachment.file_name || '';
        bubble.append(img);
      } else if (content.reply) {
        bubble.append(el('span', 'quote', quotedLine(c, Number(content.reply.to_seq))), content.reply.text);
      } else if (content.payment_request) {
        bubble.append(paymentCard(c, content.payment_request));
      } else if (content.payment_update) {
        bubble.classList.add('activity');
        bubble.textContent = preview(content);
      } else {
        bubble.textContent = preview(content);
        const options = content.quick_replies ? content.quick_replies.replies || [] : content.template ? content.template.buttons || [] : [];
        if (options.length) {
          bubble.append(el('div', 'choices', 'Options: ' + options.map((/** @type {any} */ o) => o.title).join(' · ')));
        }
      }
      const who = el('div', 'who', m.sender_id + ' · #' + m.seq);
      if (!content.activity) {
        const button = el('button', 'quote-button', '↩ Quote');
        button.setAttribute('aria-label', 'Reply quoting #' + m.seq);
        button.addEventListener('click', () => quote(m.seq));
        who.append(button);
      }
      li.append(who, bubble);
      log.append(li);
    }
    for (const n of notes) log.append(noteLi(n));
    log.scrollTop = log.scrollHeight;
  }

  /** The line a quote shows: the quoted message's sender and words. @param {Conversation} c @param {number} seq */
  function quotedLine(c, seq) {
    const m = c.messages.get(seq);
    return m ? m.sender_id + ': ' + preview(m.content) : '#' + seq;
  }

  /** Makes the next reply quote message `seq` (0: none). @param {number} seq */
  function quote(seq) {
    quotedSeq = seq;
    const c = conversations.get(selected);
    quoting.hidden = !seq || !c;
    if (seq && c) {
      $('quoting-text').textContent = 'Quoting ' + quotedLine(c, seq);
      asNote.checked = false;
      noteMode();
      replyText.focus();
    }
  }

  function noteMode() {
    reply.classList.toggle('note', asNote.checked);
    $('reply-send').textContent = asNote.checked ? 'Add note' : 'Send';
    if (asNote.checked) quote(0);
  }

  /** The open conversation's customers, each with what the desk knows of them. */
  function renderContact() {
    const c = conversations.get(selected);
    contactPanel.hidden = !c;
    contactDetails.textContent = '';
    if (!c) return;
    for (const userId of c.customers) {
      const section = el('section');
      section.dataset.contact = userId;
      section.append(el('h3', '', userId));
      const contact = contacts.get(userId);
      if (contact === undefined) {
        if (online && !contactAsked.has(userId)) loadContact(userId);
      } else {
        const rows = contact
          ? [['Name', contact.name], ['Email', contact.email], ['Phone', contact.phone], ['Company', contact.company],
            ...Object.entries(contact.attributes || {}).sort()].filter(([, value]) => value)
          : [];
        const dl = el('dl');
        for (const [term, value] of rows) dl.append(el('dt', '', term), el('dd', '', value));
        section.append(rows.length ? dl : el('p', 'none', 'No contact details yet'));
      }
      contactDetails.append(section);
    }
  }

  /**
   * Asks the desk for a customer's contact and shows it. The desk fills a
   * contact in from a form reply after it is stored, so with `since` (the
   * reply's time) it asks again, a few times and ever later, while the
   * contact is older.
   * @param {string} userId @param {number} [since] @param {number} [retry]
   */
  function loadContact(userId, since = 0, retry = 0) {
    contactAsked.add(userId);
    deskCall({ get_contact: { user_id: userId } })
      .then((a) => a.get_contact.contact, (e) => {
        if (e.code === 5) return null; // NOT_FOUND: none yet
        throw e;
      })
      .then((contact) => {
        contacts.set(userId, contact);
        renderContact();
        const stale = since && !(contact && Date.parse(contact.updated_at || '') >= since);
        if (stale && retry < CONTACT_RETRIES) setTimeout(() => loadContact(userId, since, retry + 1), 300 * 2 ** retry);
      }, report)
      .finally(() => contactAsked.delete(userId));
  }

  function renderTyping() {
    const who = [];
    for (const key of typing.keys()) {
      const [conv, user] = key.split(' ');
      if (conv === selected) who.push(user);
    }
    typingLine.textContent = who.length ? who.join(', ') + ' is typing…' : '';
  }

  function markRead() {
    const c = conversations.get(selected);
    if (!c || !online) return;
    const top = lastSeq(c);
    if (top > c.readSeq) {
      c.readSeq = top;
      send({ read: { conversation_id: c.id, seq: String(top) } });
      renderLists();
    }
  }

  // ---- answering ----

  /** @param {object} content */
  function sendContent(content) {
    if (!selected) return;
    send({ send: { conversation_id: selected, client_message_id: crypto.randomUUID(), content } });
    typingSentAt = 0;
  }

  // A payment asked of the customer: the desk opens the checkout page and
  // sends the request into the conversation. With lines, the total is
  // their sum and the amount field only shows it.
  const paymentLines = $('payment-lines');
  const paymentAmount = /** @type {HTMLInputElement} */ ($('payment-amount'));
  const paymentCurrency = /** @type {HTMLInputElement} */ ($('payment-currency'));

  /** The typed currency's digits after the point. */
  const paymentDigits = () => minorDigits(paymentCurrency.value.trim() || 'EUR');

  /** A price typed in the currency's major unit, in its minor unit. @param {string} typed */
  function minorOf(typed) {
    return Math.round(Number(typed) * 10 ** paymentDigits());
  }

  /** The lines as typed: name, quantity and the price of one, in the minor unit. */
  function typedLines() {
    return [...paymentLines.children].map((li) => {
      const [name, quantity, price] = [...li.querySelectorAll('input')].map((i) => /** @type {HTMLInputElement} */ (i).value.trim());
      return { name, quantity: Number(quantity), unit_amount: minorOf(price) };
    });
  }

  function showPaymentTotal() {
    const lines = typedLines();
    paymentAmount.readOnly = lines.length > 0;
    if (!lines.length) return;
    const total = lines.reduce((sum, l) => sum + (l.quantity > 0 && l.unit_amount > 0 ? l.quantity * l.unit_amount : 0), 0);
    paymentAmount.value = (total / 10 ** paymentDigits()).toFixed(paymentDigits());
  }

  $('payment-add-line').addEventListener('click', () => {
    const li = el('li', '');
    const n = paymentLines.children.length + 1;
    for (const [label, type, value, size] of [['name', 'text', '', '16'], ['quantity', 'number', '1', '3'], ['price of one', 'number', '', '8']]) {
      const input = /** @type {HTMLInputElement} */ (el('input', ''));
      Object.assign(input, { type, value, size: Number(size), placeholder: label });
      input.setAttribute('aria-label', `Line ${n}: ${label}`);
      if (type === 'number') Object.assign(input, { min: label === 'quantity' ? '1' : '0.01', step: label === 'quantity' ? '1' : '0.01' });
      input.addEventListener('input', showPaymentTotal);
      li.append(input);
    }
    const remove = el('button', 'remove', '✕');
    Object.assign(remove, { type: 'button', title: 'Remove the line' });
    remove.addEventListener('click', () => { li.remove(); showPaymentTotal(); });
    li.append(remove);
    paymentLines.append(li);
    showPaymentTotal();
    /** @type {HTMLInputElement} */ (li.querySelector('input')).focus();
  });
  paymentCurrency.addEventListener('input', showPaymentTotal);

  $('payment').addEventListener('submit', (e) => {
    e.preventDefault();
    if (!selected) return;
    const currency = paymentCurrency.value.trim() || 'EUR';
    const description = /** @type {HTMLInputElement} */ ($('payment-description')).value.trim();
    const lines = typedLines();
    if (lines.some((l) => !l.name || !(l.quantity >= 1) || !Number.isInteger(l.quantity) || !(l.unit_amount > 0))) {
      return report(new Error('Each line needs a name, a whole quantity and a price'));
    }
    const amount = lines.length ? lines.reduce((sum, l) => sum + l.quantity * l.unit_amount, 0) : minorOf(paymentAmount.value);
    if (!(amount > 0) || !description) return report(new Error('A payment needs an amount and a description'));
    const line_items = lines.map((l) => ({ name: l.name, quantity: String(l.quantity), unit_amount: String(l.unit_amount) }));
    deskCall({ request_payment: { conversation_id: selected, amount: String(amount), currency, description, line_items } }).then(() => {
      paymentLines.replaceChildren();
      showPaymentTotal();
    }, report);
  });

  reply.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = replyText.value.trim();
    if (!text || !selected) return;
    replyText.value = '';
    if (asNote.checked) {
      const id = selected;
      deskCall({ add_note: { conversation_id: id, text } }).then((a) => addNotes(id, [a.add_note.note]), report);
      return;
    }
    sendContent(quotedSeq ? { reply: { to_seq: String(quotedSeq), text } } : { text });
    quote(0);
    send({ typing: { conversation_id: selected, active: false } });
  });
  asNote.addEventListener('change', noteMode);
  $('quoting-cancel').addEventListener('click', () => quote(0));
  replyText.addEventListener('keydown', (e) => {
    const n = cannedOffered.length;
    if (n && (e.key === 'ArrowDown' || e.key === 'ArrowUp')) {
      e.preventDefault();
      cannedActive = (cannedActive + (e.key === 'ArrowDown' ? 1 : n - 1)) % n;
      renderCanned();
    } else if (n && e.key === 'Escape') {
      showCanned([]);
    } else if (e.key === 'Enter' && !e.shiftKey) {
      e.preventDefault();
      if (n) pickCanned(cannedOffered[cannedActive]);
      else reply.requestSubmit();
    }
  });
  replyText.addEventListener('blur', () => showCanned([]));
  replyText.addEventListener('input', () => {
    showCanned(cannedMatches());
    if (!selected || asNote.checked || Date.now() - typingSentAt < 3000) return;
    typingSentAt = Date.now();
    send({ typing: { conversation_id: selected, active: true } });
  });
  /** The canned replies of the agent's teams whose shortcut starts with what the composer holds, a `/word`. */
  function cannedMatches() {
    const typed = replyText.value.toLowerCase();
    if (!/^\/\S*$/.test(typed)) return [];
    const own = ((mine() || {}).agent || {}).team_ids || [];
    return teams
      .filter((t) => own.includes(t.team_id))
      .flatMap((t) => t.canned_replies || [])
      .filter((r) => ('/' + r.shortcut.replace(/^\//, '')).toLowerCase().startsWith(typed));
  }

  /** @param {CannedReply[]} replies */
  function showCanned(replies) {
    cannedOffered = replies;
    cannedActive = 0;
    renderCanned();
  }

  function renderCanned() {
    cannedList.textContent = '';
    cannedList.hidden = !cannedOffered.length;
    replyText.removeAttribute('aria-activedescendant');
    cannedOffered.forEach((r, i) => {
      const li = el('li');
      li.id = 'canned-' + i;
      li.setAttribute('role', 'option');
      li.setAttribute('aria-selected', String(i === cannedActive));
      li.dataset.shortcut = r.shortcut;
      li.append(el('span', 'shortcut', r.shortcut), el('span', 'text', r.text));
      // On mousedown, so the composer keeps the focus.
      li.addEventListener('mousedown', (e) => {
        e.preventDefault();
        pickCanned(r);
      });
      cannedList.append(li);
      if (i === cannedActive) {
        replyText.setAttribute('aria-activedescendant', li.id);
        li.scrollIntoView({ block: 'nearest' });
      }
    });
  }

  /** Fills the composer with a canned reply, to edit or send. @param {CannedReply} r */
  function pickCanned(r) {
    replyText.value = r.text;
    showCanned([]);
    replyText.focus();
  }

  quick.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = /** @type {HTMLInputElement} */ ($('quick-text')).value.trim();
    const options = /** @type {HTMLInputElement} */ ($('quick-options')).value.split(',').map((s) => s.trim()).filter(Boolean);
    if (!text || !options.length) return;
    sendContent({
      quick_replies: { text, replies: options.map((title) => ({ title, payload: title.toLowerCase().replace(/\W+/g, '-') })) },
    });
  });
  /** Changes the selected conversation's lifecycle. @param {object} change */
  function changeLifecycle(change) {
    if (!selected) return;
    send({ update_lifecycle: { conversation_id: selected, client_change_id: crypto.randomUUID(), change } });
  }
  $('take-over').addEventListener('click', () => changeLifecycle({ owner: 'THREAD_OWNER_INBOX', assignee_id: me }));
  $('pass-back').addEventListener('click', () => changeLifecycle({ owner: 'THREAD_OWNER_BOT' }));
  $('resolve').addEventListener('click', () => changeLifecycle({ status: 'CONVERSATION_STATUS_RESOLVED' }));
  $('send-lead-form').addEventListener('click', () => {
    sendContent({
      form: {
        form_id: 'lead',
        text: 'How can we reach you?',
        fields: [
          { name: 'name', label: 'Name', kind: 'FORM_FIELD_KIND_TEXT', required: true },
          { name: 'email', label: 'Email', kind: 'FORM_FIELD_KIND_EMAIL', required: true },
          { name: 'phone', label: 'Phone', kind: 'FORM_FIELD_KIND_PHONE' },
        ],
      },
    });
  });
  $('send-photo').addEventListener('click', () => {
    sendContent({
      attachment: { url: new URL('/trail-tent.svg', location.href).href, mime_type: 'image/svg+xml', size_bytes: '1200', file_name: 'trail-tent.svg' },
    });
  });

  connect();
})();
