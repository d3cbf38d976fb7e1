// The chat widget in a real browser, against a real `natter dev` and its
// demo: the sample business site with the widget on it, and the agent
// console answering as the business.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  DESKTOP, PHONE, launchBrowser, screenshotPath, startNatter, unique, until, widgetSource,
} from './harness.mjs';

/** @type {Awaited<ReturnType<typeof startNatter>>} */
let natter;
/** @type {import('playwright-core').Browser} */
let browser;

before(async () => {
  [natter, browser] = await Promise.all([startNatter(), launchBrowser()]);
});

after(async () => {
  await browser?.close();
  await natter?.stop();
});

// ---- the visitor's side ----

/** Opens the demo site in `context` and waits for the widget to connect. */
async function visit(context) {
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error('page error:', e.message));
  await page.goto(natter.demo + '/');
  await online(page);
  return page;
}

async function state(page) {
  return page.evaluate(() => window.Natter.state());
}

async function online(page, user) {
  await page.waitForFunction(
    (user) => {
      const s = window.Natter && window.Natter.state();
      return s && s.online && (!user || s.userId === user);
    },
    user,
    { timeout: 15000 },
  );
  return state(page);
}

async function signIn(page, name) {
  await page.fill('#signin-name', name);
  await page.click('#signin-button');
  return online(page, 'user-' + name);
}

async function openWidget(page) {
  if ((await page.getAttribute('natter-chat .launcher', 'aria-expanded')) !== 'true') {
    await page.click('natter-chat .launcher');
  }
  await page.locator('natter-chat .panel').waitFor({ state: 'visible' });
}

async function say(page, text) {
  await page.fill('natter-chat textarea', text);
  await page.press('natter-chat textarea', 'Enter');
}

/** The widget's messages: seq (0 while not stored), sender and text. */
async function transcript(page) {
  return page.evaluate(() =>
    Array.from(document.querySelector('natter-chat').shadowRoot.querySelectorAll('li.msg:not(.activity)'), (li) => ({
      seq: Number(li.dataset.seq || 0),
      sender: li.dataset.sender,
      mine: li.classList.contains('mine'),
      text: li.querySelector('.bubble').textContent,
      status: li.querySelector('.meta')?.textContent || '',
    })),
  );
}

/** Waits until the widget shows `text` stored (with a seq) and returns it. */
async function shows(page, text, ms) {
  return until(async () => (await transcript(page)).find((m) => m.text === text && m.seq > 0), `"${text}" in the widget`, ms);
}

// ---- the business's side ----

async function agentConsole() {
  const context = await browser.newContext(DESKTOP);
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error('agent page error:', e.message));
  await page.goto(natter.demo + '/agent');
  await page.waitForFunction(() => /Online/.test(document.getElementById('status').textContent));
  return page;
}

async function pick(agent, conversationId) {
  const button = agent.locator(`button[data-conversation="${conversationId}"]`);
  await button.waitFor({ timeout: 15000 });
  await button.click();
}

async function agentTranscript(agent) {
  return agent.evaluate(() =>
    Array.from(document.querySelectorAll('#messages li'), (li) => ({
      seq: Number(li.dataset.seq),
      sender: li.dataset.sender,
      text: li.querySelector('.bubble').textContent,
      payload: li.dataset.payload || '',
    })),
  );
}

/** A visitor on a phone with the widget open, and the agent console on their conversation. */
async function visitorWithAgent() {
  const context = await browser.newContext(PHONE);
  const page = await visit(context);
  const { conversationId } = await state(page);
  await openWidget(page);
  const agent = await agentConsole();
  await pick(agent, conversationId);
  return { page, agent, close: () => Promise.all([context.close(), agent.context().close()]) };
}

async function agentReply(agent, text) {
  await agent.fill('#reply-text', text);
  await agent.press('#reply-text', 'Enter');
}

// ---- scenarios ----

test('the gateway serves the widget exactly as committed', async () => {
  const response = await fetch(natter.gateway + '/widget.js');
  assert.equal(response.status, 200);
  assert.equal(response.headers.get('content-type'), 'text/javascript; charset=utf-8');
  assert.equal(await response.text(), widgetSource());
});

test('a signed-in visitor on desktop and phone sees one conversation, and the agent reaches both', async () => {
  const name = unique('dana');
  const desktopContext = await browser.newContext(DESKTOP);
  const phoneContext = await browser.newContext(PHONE);
  const [desktop, phone] = await Promise.all([visit(desktopContext), visit(phoneContext)]);
  const [onDesktop, onPhone] = [await signIn(desktop, name), await signIn(phone, name)];
  assert.equal(onDesktop.conversationId, onPhone.conversationId);

  await openWidget(desktop);
  await say(desktop, 'Hello from the desktop');
  await openWidget(phone);
  await shows(phone, 'Hello from the desktop');
  await say(phone, 'And hello from the phone');
  await shows(desktop, 'And hello from the phone');

  const agent = await agentConsole();
  await pick(agent, onDesktop.conversationId);
  // The agent has read it: the visitor sees a read receipt.
  await until(async () => (await transcript(desktop)).at(-1)?.status === 'Read', 'a read receipt on the desktop');
  // The agent types: both devices show it.
  await agent.fill('#reply-text', 'Let me');
  await agent.locator('#reply-text').pressSequentially(' check');
  for (const page of [desktop, phone]) {
    await page.waitForFunction(() =>
      /agent is typing/.test(document.querySelector('natter-chat').shadowRoot.querySelector('.typing').textContent));
  }
  await agent.fill('#reply-text', '');
  await agentReply(agent, 'Hi! How can we help?');
  await Promise.all([shows(desktop, 'Hi! How can we help?'), shows(phone, 'Hi! How can we help?')]);

  // Same messages, same order, on both devices and at the agent.
  const desktopSeqs = (await transcript(desktop)).map((m) => `${m.seq}:${m.text}`);
  assert.deepEqual((await transcript(phone)).map((m) => `${m.seq}:${m.text}`), desktopSeqs);
  assert.deepEqual(desktopSeqs.map((line) => Number(line.split(':')[0])), desktopSeqs.map((_, i) => i + 1));

  // Screenshots of the open widget for the record.
  await desktop.screenshot({ path: screenshotPath('widget-desktop.png') });
  await phone.screenshot({ path: screenshotPath('widget-phone.png') });

  // A closed widget counts what arrives as unread on its bubble; reading it
  // on one device clears it on the other.
  await phone.click('natter-chat .close');
  await desktop.click('natter-chat .close');
  await agentReply(agent, 'One more thing');
  for (const page of [phone, desktop]) {
    await shows(page, 'One more thing');
    await page.locator('natter-chat .badge').waitFor({ state: 'visible' });
    assert.equal(await page.textContent('natter-chat .badge'), '1');
    assert.match(await page.getAttribute('natter-chat .launcher', 'aria-label'), /1 unread/);
  }
  await openWidget(phone);
  await phone.locator('natter-chat .badge').waitFor({ state: 'hidden' });
  await desktop.locator('natter-chat .badge').waitFor({ state: 'hidden' });

  await Promise.all([desktopContext.close(), phoneContext.close(), agent.context().close()]);
});

test('a guest chats, signs in, and finds the conversation with its history on another device', async () => {
  const name = unique('erin');
  const laptopContext = await browser.newContext(DESKTOP);
  const laptop = await visit(laptopContext);
  const guest = await state(laptop);
  assert.match(guest.userId, /^guest-/);
  await openWidget(laptop);
  await say(laptop, 'Do you ship to Norway?');
  await shows(laptop, 'Do you ship to Norway?');

  const known = await signIn(laptop, name);
  assert.equal(known.conversationId, guest.conversationId, 'the guest conversation follows the sign-in');
  // The same device keeps showing the history under the new identity.
  await shows(laptop, 'Do you ship to Norway?');

  const tabletContext = await browser.newContext(PHONE);
  const tablet = await visit(tabletContext);
  const there = await signIn(tablet, name);
  assert.equal(there.conversationId, guest.conversationId);
  await openWidget(tablet);
  const question = await shows(tablet, 'Do you ship to Norway?');
  assert.equal(question.sender, guest.userId);
  assert.ok(question.mine, 'what the visitor wrote as a guest shows as theirs');
  const history = await transcript(tablet);
  assert.equal(history[0].seq, 1, 'the whole history, from the greeting');
  assert.match(history[0].text, /What can we help you with/);

  await say(tablet, 'Now on my tablet');
  await shows(laptop, 'Now on my tablet');
  await Promise.all([laptopContext.close(), tabletContext.close()]);
});

test('a quick reply tap reaches the business as a postback', async () => {
  const context = await browser.newContext(PHONE);
  const page = await visit(context);
  const { conversationId, userId } = await state(page);
  await openWidget(page);
  const button = page.locator('natter-chat .choices button', { hasText: 'Track my order' });
  await button.click();
  await shows(page, 'Track my order');
  // Answered: the quick replies are gone.
  await button.waitFor({ state: 'hidden' });

  const agent = await agentConsole();
  await pick(agent, conversationId);
  const postback = await until(
    async () => (await agentTranscript(agent)).find((m) => m.payload === 'track-order'),
    'the postback at the agent console',
  );
  assert.equal(postback.sender, userId);
  assert.match(postback.text, /Track my order/);
  await Promise.all([context.close(), agent.context().close()]);
});

test('a visitor who asks for a person sees the request between the messages', async () => {
  const context = await browser.newContext(PHONE);
  const page = await visit(context);
  await openWidget(page);
  await say(page, 'Can I talk to a human?');
  await shows(page, 'Can I talk to a human?');
  const line = page.locator('natter-chat li.activity', { hasText: 'Asking for a person' });
  await line.waitFor();
  // The line comes right after the message that asked, and is not counted
  // among the visitor's messages.
  const seqs = await page.evaluate(() =>
    Array.from(document.querySelector('natter-chat').shadowRoot.querySelectorAll('li.msg'), (li) => li.dataset.seq),
  );
  const asked = (await transcript(page)).find((m) => m.text === 'Can I talk to a human?');
  assert.equal(seqs[seqs.indexOf(String(asked.seq)) + 1], String(asked.seq + 1));
  await context.close();
});

test('an agent takes over from the bot and resolves, and the visitor sees both', async () => {
  const { page, agent, close } = await visitorWithAgent();
  await agent.click('#take-over');
  await page.locator('natter-chat li.activity', { hasText: 'A person has joined the conversation' }).waitFor();
  await agent.click('#resolve');
  await page.locator('natter-chat li.activity', { hasText: 'Conversation resolved' }).waitFor();
  // The console shows each change in the thread.
  await until(
    async () => (await agentTranscript(agent)).some((m) => /status resolved · assigned to agent/.test(m.text)),
    'the resolution in the console',
  );
  // The visitor writes again: the conversation opens again.
  await say(page, 'One more question');
  await page.locator('natter-chat li.activity', { hasText: 'Conversation reopened' }).waitFor();
  await close();
});

test('a lead form is checked in the widget and its values reach the business', async () => {
  const { page, agent, close } = await visitorWithAgent();
  await agent.click('#send-lead-form');
  const form = page.locator('natter-chat form.form');
  await form.waitFor();
  await form.locator('input[name=name]').fill('Ann Example');
  await form.locator('input[name=email]').fill('ann@example');
  await form.locator('button').click();
  // A malformed address is refused in the widget; nothing is sent.
  await form.locator('[role=alert]', { hasText: 'Please check Email' }).waitFor();
  assert.equal(await form.locator('input[name=email]').getAttribute('aria-invalid'), 'true');
  await form.locator('input[name=email]').fill('ann@example.com');
  await form.locator('button').click();
  await shows(page, 'email: ann@example.com\nname: Ann Example');
  const reply = await until(
    async () => (await agentTranscript(agent)).find((m) => m.text.startsWith('📋 email')),
    'the form reply at the agent console',
  );
  assert.equal(reply.text, '📋 email: ann@example.com · name: Ann Example');
  // After a reload the form shows as answered.
  await page.reload();
  await online(page);
  await openWidget(page);
  await shows(page, 'email: ann@example.com\nname: Ann Example');
  await until(async () => form.locator('input[name=email]').isDisabled(), 'the answered form disabled after a reload');
  await close();
});

test('images and files sent by reference show inline', async () => {
  const { page, agent, close } = await visitorWithAgent();
  await agent.click('#send-photo');
  const image = page.locator('natter-chat .bubble img[alt="trail-tent.svg"]');
  await image.waitFor();
  await page.waitForFunction(
    () => document.querySelector('natter-chat').shadowRoot.querySelector('.bubble img').naturalWidth > 0,
  );
  assert.equal(await image.getAttribute('src'), natter.demo + '/trail-tent.svg');
  const link = page.locator('natter-chat .bubble a', { hasText: 'trail-tent.svg' });
  assert.equal(await link.getAttribute('href'), natter.demo + '/trail-tent.svg');
  assert.equal(await link.getAttribute('rel'), 'noopener noreferrer');
  await close();
});

test('messages written during a network cut are delivered once each, in order, on reconnect', async () => {
  const context = await browser.newContext(DESKTOP);
  // The widget's WebSocket goes through this route, so the test can mute
  // the server's answers (a lost send_ack) and cut the connection. Going
  // offline alone (context.setOffline) leaves an open WebSocket open in
  // Chromium, silently dropping its frames.
  let mode = 'open';
  const sockets = new Set();
  await context.routeWebSocket(/\/v1\/connect/, (ws) => {
    if (mode === 'cut') {
      ws.close({ code: 4000, reason: 'network cut' });
      return;
    }
    const server = ws.connectToServer();
    sockets.add(ws);
    ws.onMessage((message) => server.send(message));
    server.onMessage((message) => {
      if (mode === 'open') ws.send(message);
    });
  });
  const page = await visit(context);
  const { conversationId } = await state(page);
  const agent = await agentConsole();
  await pick(agent, conversationId);
  await openWidget(page);
  await say(page, 'before the cut');
  await shows(page, 'before the cut');

  // The server stores this one, but its answers never arrive.
  mode = 'mute';
  await say(page, 'one');
  await until(async () => (await agentTranscript(agent)).some((m) => m.text === 'one'), '"one" at the agent');
  assert.equal((await transcript(page)).find((m) => m.text === 'one').seq, 0, 'the widget has no ack for "one"');

  // The network goes away.
  mode = 'cut';
  await context.setOffline(true);
  for (const ws of sockets) await ws.close({ code: 4000, reason: 'network cut' }).catch(() => {});
  sockets.clear();
  await page.waitForFunction(() => !window.Natter.state().online);
  await say(page, 'two');
  await say(page, 'three');
  const waiting = await transcript(page);
  assert.deepEqual(waiting.slice(-3).map((m) => [m.text, m.seq]), [['one', 0], ['two', 0], ['three', 0]]);
  assert.equal(waiting.at(-1).status, 'Waiting for network…');
  const outbox = await page.evaluate(() => JSON.parse(localStorage.getItem('natter:demo:outbox')).map((p) => p.content.text));
  assert.deepEqual(outbox, ['one', 'two', 'three'], 'kept in the outbox');

  // The network returns.
  mode = 'open';
  await context.setOffline(false);
  for (const text of ['one', 'two', 'three']) await shows(page, text);
  await until(async () => (await agentTranscript(agent)).some((m) => m.text === 'three'), '"three" at the agent');

  const expected = ['before the cut', 'one', 'two', 'three'];
  const mine = (await transcript(page)).filter((m) => expected.includes(m.text));
  assert.deepEqual(mine.map((m) => m.text), expected, 'each once, in order, in the widget');
  const seqs = mine.map((m) => m.seq);
  assert.deepEqual(seqs, seqs.map((_, i) => seqs[0] + i), 'consecutive seqs');
  // Give a duplicate time to show up if there were one.
  await page.waitForTimeout(500);
  const delivered = (await agentTranscript(agent)).filter((m) => expected.includes(m.text));
  assert.deepEqual(delivered.map((m) => m.text), expected, 'each once, in order, at the business');
  assert.deepEqual(delivered.map((m) => m.seq), seqs);
  assert.equal(await page.evaluate(() => localStorage.getItem('natter:demo:outbox')), null, 'the outbox is empty');
  await Promise.all([context.close(), agent.context().close()]);
});

test('the widget and the page do not style each other', async () => {
  // The host page's styles, first without the widget...
  const bare = await browser.newContext(DESKTOP);
  await bare.route('**/widget.js', (route) => route.abort());
  const plain = await bare.newPage();
  await plain.goto(natter.demo + '/');
  const pageStyles = (page) =>
    page.evaluate(() => {
      const pick = (el) => {
        const s = getComputedStyle(el);
        return [s.fontFamily, s.backgroundColor, s.color, s.textTransform, s.borderRadius, s.padding, s.fontSize, s.lineHeight].join('|');
      };
      return {
        body: pick(document.body),
        buttons: Array.from(document.querySelectorAll('body button, body input, body p, body h1, body h3'), pick),
        sheets: document.styleSheets.length,
        styles: document.querySelectorAll('style').length,
      };
    });
  const without = await pageStyles(plain);
  await bare.close();

  // ...then with it, open.
  const context = await browser.newContext(DESKTOP);
  const page = await visit(context);
  await openWidget(page);
  assert.deepEqual(await pageStyles(page), without, 'the widget changes nothing on the page');

  // The page's `* { font-family: serif }` and `button { ... }` stop at the
  // widget's shadow root.
  const inside = await page.evaluate(() => {
    const root = document.querySelector('natter-chat').shadowRoot;
    const style = (selector) => getComputedStyle(root.querySelector(selector));
    return {
      font: style('.bubble').fontFamily,
      sendBackground: style('.send').backgroundColor,
      launcherRadius: style('.launcher').borderRadius,
      transform: style('.choices button').textTransform,
      textareaFont: style('textarea').fontFamily,
    };
  });
  assert.match(inside.font, /^system-ui/);
  assert.doesNotMatch(inside.textareaFont, /Georgia/);
  assert.equal(inside.sendBackground, 'rgb(47, 111, 79)', 'the accent from data-color');
  assert.equal(inside.launcherRadius, '50%');
  assert.equal(inside.transform, 'none');
  await context.close();
});

test('a reload keeps the visitor, the conversation and the cursor, without duplicates', async () => {
  const context = await browser.newContext(DESKTOP);
  const page = await visit(context);
  await openWidget(page);
  await say(page, 'Still there after a reload?');
  await shows(page, 'Still there after a reload?');
  const before = await state(page);
  const lines = (await transcript(page)).map((m) => `${m.seq}:${m.text}`);
  await page.waitForFunction(() => window.Natter.state().cursor > 0);
  await page.reload();
  const after = await online(page);
  assert.equal(after.userId, before.userId);
  assert.equal(after.conversationId, before.conversationId);
  assert.ok(after.cursor >= before.cursor, 'it resumes from its cursor');
  await openWidget(page);
  await shows(page, 'Still there after a reload?');
  await page.waitForTimeout(300);
  assert.deepEqual((await transcript(page)).map((m) => `${m.seq}:${m.text}`), lines);
  await context.close();
});

test('the widget works from the keyboard and announces itself', async () => {
  const context = await browser.newContext(DESKTOP);
  const page = await visit(context);
  const launcher = page.locator('natter-chat .launcher');
  await launcher.focus();
  await page.keyboard.press('Enter');
  await page.locator('natter-chat .panel').waitFor({ state: 'visible' });
  assert.equal(await launcher.getAttribute('aria-expanded'), 'true');
  const focused = () => page.evaluate(() => document.querySelector('natter-chat').shadowRoot.activeElement?.id || document.activeElement.tagName);
  assert.equal(await focused(), 'input', 'focus moves into the composer');
  assert.equal(await page.getAttribute('natter-chat .panel', 'role'), 'dialog');
  assert.equal(await page.getAttribute('natter-chat .log', 'role'), 'log');
  await page.keyboard.type('Typed without a mouse');
  await page.keyboard.press('Enter');
  await shows(page, 'Typed without a mouse');
  await page.keyboard.press('Escape');
  await page.locator('natter-chat .panel').waitFor({ state: 'hidden' });
  assert.equal(await launcher.getAttribute('aria-expanded'), 'false');
  assert.equal(await page.evaluate(() => document.querySelector('natter-chat').shadowRoot.activeElement?.className), 'launcher');
  await context.close();
});
