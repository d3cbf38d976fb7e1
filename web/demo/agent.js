// @ts-check
/**
 * The demo's agent console: a person answering as the business.
 *
 * It signs in as the demo agent (a token from the demo's `/agent-token`),
 * opens a device session on the gateway's WebSocket, and learns the
 * agent's conversations from the agent's update log: the agent is a member
 * of every visitor's conversation, so catching up from cursor 0 replays
 * every join and message. The open conversation is watched, and replies go
 * out as `send` frames.
 */
(function () {
  'use strict';

  /**
   * @typedef {{ seq: number, sender_id: string, client_message_id?: string, content: any }} Message
   * @typedef {{ id: string, customers: string[], messages: Map<number, Message>, readSeq: number }} Conversation
   */

  const gatewayMeta = /** @type {HTMLMetaElement} */ (document.querySelector('meta[name="natter-gateway"]'));
  const gateway = gatewayMeta.content;
  const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));
  const status = $('status');
  const list = $('conversations');
  const log = $('messages');
  const typingLine = $('typing');
  const reply = /** @type {HTMLFormElement} */ ($('reply'));
  const replyText = /** @type {HTMLTextAreaElement} */ ($('reply-text'));
  const quick = /** @type {HTMLFormElement} */ ($('quick'));

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

  /** @param {any} value @returns {any} */
  function snake(value) {
    if (Array.isArray(value)) return value.map(snake);
    if (!value || typeof value !== 'object') return value;
    /** @type {Record<string, any>} */
    const out = {};
    for (const key of Object.keys(value)) out[key.replace(/[A-Z]/g, (c) => '_' + c.toLowerCase())] = snake(value[key]);
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
      c = { id, customers: [], messages: new Map(), readSeq: 0 };
      conversations.set(id, c);
    }
    return c;
  }

  async function connect() {
    try {
      const response = await fetch('/agent-token');
      if (!response.ok) throw new Error('agent token: ' + response.status);
      const body = await response.json();
      me = body.userId;
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
      status.textContent = 'Online as ' + me;
      if (selected) watch(selected);
    } else if (f.update) {
      cursor = Number(f.update.cursor || cursor);
      const e = f.update.event || {};
      if (e.membership_change) {
        const m = e.membership_change;
        const c = conversation(m.conversation_id);
        if (m.role === 'ROLE_CUSTOMER' && m.kind !== 'MEMBERSHIP_CHANGE_KIND_LEFT' && !c.customers.includes(m.user_id)) {
          c.customers.push(m.user_id);
        }
      } else if (e.message) accept(e.message);
      else if (e.read_marker && e.read_marker.user_id === me) {
        const c = conversation(e.read_marker.conversation_id);
        c.readSeq = Math.max(c.readSeq, Number(e.read_marker.seq || 0));
      }
      renderList();
      if (cursor % 50 === 0) send({ ack: { cursor: String(cursor) } });
    } else if (f.message) {
      accept(f.message);
      renderList();
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
    } else if (f.error) {
      console.warn('natter:', f.error.reason || f.error.code, f.error.message);
    }
  }

  /** @param {any} m */
  function accept(m) {
    const c = conversation(m.conversation_id);
    const seq = Number(m.seq || 0);
    if (c.messages.has(seq)) return;
    c.messages.set(seq, { ...m, seq, content: m.content || {} });
    if (m.conversation_id === selected) {
      renderThread();
      markRead();
    }
  }

  /** @param {Conversation} c */
  function lastSeq(c) {
    let top = 0;
    for (const s of c.messages.keys()) if (s > top) top = s;
    return top;
  }

  /** @param {Conversation} c */
  function unread(c) {
    let n = 0;
    for (const m of c.messages.values()) if (m.sender_id !== me && !m.content.activity && m.seq > c.readSeq) n++;
    return n;
  }

  /** @param {any} content */
  function preview(content) {
    if (content.text) return content.text;
    if (content.postback) return '↩ ' + content.postback.title;
    if (content.quick_replies) return content.quick_replies.text;
    if (content.template) return content.template.text;
    if (content.attachment) return '📎 ' + (content.attachment.file_name || 'file');
    if (content.activity) return activityLine(content.activity);
    if (content.form) return '📋 ' + content.form.text;
    if (content.form_reply) {
      const values = content.form_reply.values || {};
      return '📋 ' + Object.keys(values).sort().map((k) => k + ': ' + values[k]).join(' · ');
    }
    return '';
  }

  /** A lifecycle change as the console shows it: status, then who and where. @param {any} l */
  function activityLine(l) {
    const status = String(l.status || 'CONVERSATION_STATUS_OPEN').replace('CONVERSATION_STATUS_', '').toLowerCase();
    const parts = ['status ' + status];
    if (l.assignee_id) parts.push('assigned to ' + l.assignee_id);
    if (l.team_id) parts.push('team ' + l.team_id);
    if (l.tags && l.tags.length) parts.push('tags ' + l.tags.join(', '));
    return '⚑ ' + parts.join(' · ');
  }

  function renderList() {
    const sorted = Array.from(conversations.values()).sort((a, b) => (a.id < b.id ? 1 : -1));
    list.textContent = '';
    for (const c of sorted) {
      const li = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.dataset.conversation = c.id;
      button.setAttribute('aria-current', String(c.id === selected));
      const name = document.createElement('span');
      name.className = 'name';
      name.textContent = c.customers.join(', ') || 'visitor';
      const last = c.messages.get(lastSeq(c));
      const small = document.createElement('span');
      small.className = 'preview';
      small.textContent = last ? preview(last.content) : '';
      name.append(small);
      button.append(name);
      const n = unread(c);
      if (n) {
        const badge = document.createElement('span');
        badge.className = 'unread';
        badge.textContent = String(n);
        badge.setAttribute('aria-label', n + ' unread');
        button.append(badge);
      }
      button.addEventListener('click', () => select(c.id));
      li.append(button);
      list.append(li);
    }
  }

  /** @param {string} id */
  function select(id) {
    if (selected && selected !== id) send({ unwatch: { conversation_id: selected } });
    selected = id;
    $('empty').hidden = true;
    log.hidden = reply.hidden = quick.hidden = false;
    watch(id);
    renderThread();
    renderList();
    renderTyping();
    markRead();
    replyText.focus();
  }

  /** @param {string} id */
  function watch(id) {
    send({ watch: { conversation_id: id, after_seq: String(lastSeq(conversation(id))) } });
  }

  function renderThread() {
    const c = conversations.get(selected);
    if (!c) return;
    log.textContent = '';
    for (const m of Array.from(c.messages.values()).sort((a, b) => a.seq - b.seq)) {
      const li = document.createElement('li');
      li.dataset.seq = String(m.seq);
      li.dataset.sender = m.sender_id;
      if (m.client_message_id) li.dataset.cid = m.client_message_id;
      if (m.sender_id === me) li.className = 'mine';
      const who = document.createElement('div');
      who.className = 'who';
      who.textContent = m.sender_id + ' · #' + m.seq;
      const bubble = document.createElement('div');
      bubble.className = 'bubble';
      const content = m.content;
      if (content.activity) {
        bubble.classList.add('activity');
        bubble.textContent = activityLine(content.activity);
      } else if (content.postback) {
        bubble.classList.add('postback');
        li.dataset.payload = content.postback.payload;
        bubble.textContent = '↩ ' + content.postback.title + ' (' + content.postback.payload + ')';
      } else if (content.attachment && /^image\//.test(content.attachment.mime_type || '')) {
        const img = document.createElement('img');
        img.src = content.attachment.url;
        img.alt = content.attachment.file_name || '';
        bubble.append(img);
      } else {
        bubble.textContent = preview(content);
        const options = content.quick_replies ? content.quick_replies.replies || [] : content.template ? content.template.buttons || [] : [];
        if (options.length) {
          const choices = document.createElement('div');
          choices.className = 'choices';
          choices.textContent = 'Options: ' + options.map((/** @type {any} */ o) => o.title).join(' · ');
          bubble.append(choices);
        }
      }
      li.append(who, bubble);
      log.append(li);
    }
    log.scrollTop = log.scrollHeight;
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
      renderList();
    }
  }

  /** @param {object} content */
  function sendContent(content) {
    if (!selected) return;
    send({ send: { conversation_id: selected, client_message_id: crypto.randomUUID(), content } });
    typingSentAt = 0;
  }

  reply.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = replyText.value.trim();
    if (!text) return;
    replyText.value = '';
    sendContent({ text });
    send({ typing: { conversation_id: selected, active: false } });
  });
  replyText.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) {
      e.preventDefault();
      reply.requestSubmit();
    }
  });
  replyText.addEventListener('input', () => {
    if (!selected || Date.now() - typingSentAt < 3000) return;
    typingSentAt = Date.now();
    send({ typing: { conversation_id: selected, active: true } });
  });
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
