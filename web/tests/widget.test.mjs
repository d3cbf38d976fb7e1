// The chat widget in a real browser, against a real `natter dev` and its
// demo: the sample business site with the widget on it, and the agent
// console answering as the business.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  DESKTOP, PHONE, acceptOffer, agentReply, agentTranscript, launchBrowser, online, openConsole, openWidget,
  resolveConversation, say, screenshotPath, shows, showsActivity, signIn, startNatter, state, transcript, unique,
  until, visitDemo, widgetSource,
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

const visit = (context) => visitDemo(natter, context);
const agentConsole = () => openConsole(natter, browser);

/**
 * The visitor asks for a person and the agent, at a console of their own,
 * accepts the offer. Each test ends with `done`, which resolves it: the
 * desk would otherwise give the agent's unresolved conversations back to
 * the queue, and offer them to the next test's console first.
 */
async function agentJoins(page, conversationId) {
  const agent = await agentConsole();
  await say(page, 'Can I talk to a person?');
  await acceptOffer(agent, conversationId);
  await showsActivity(page, 'agent joined the conversation');
  return agent;
}

/** A visitor on a phone with the widget open, and the agent console on their conversation. */
async function visitorWithAgent() {
  const context = await browser.newContext(PHONE);
  const page = await visit(context);
  const { conversationId } = await state(page);
  await openWidget(page);
  const agent = await agentJoins(page, conversationId);
  return { page, agent, close: () => done(agent, conversationId, context) };
}

/** Resolves the agent's conversation, then closes the agent's and the visitor's contexts. */
async function done(agent, conversationId, ...contexts) {
  await resolveConversation(agent, conversationId);
  await Promise.all([agent.context().close(), ...contexts.map((c) => c.close())]);
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

  const agent = await agentJoins(desktop, onDesktop.conversationId);
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

  // Same messages, same order, on both devices, from the greeting on.
  const desktopSeqs = (await transcript(desktop)).map((m) => `${m.seq}:${m.text}`);
  assert.deepEqual((await transcript(phone)).map((m) => `${m.seq}:${m.text}`), desktopSeqs);
  const seqs = desktopSeqs.map((line) => Number(line.split(':')[0]));
  assert.equal(seqs[0], 1);
  assert.ok(seqs.every((seq, i) => i === 0 || seq > seqs[i - 1]), `each once, in order: ${seqs}`);

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

  await done(agent, onDesktop.conversationId, desktopContext, phoneContext);
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

test('a quick reply tap reaches the business as a postback, and the person reply brings an agent', async () => {
  const context = await browser.newContext(PHONE);
  const page = await visit(context);
  const { conversationId, userId } = await state(page);
  await openWidget(page);
  const agent = await agentConsole();
  const button = page.locator('natter-chat .choices button', { hasText: 'Talk to a person' });
  await button.click();
  await shows(page, 'Talk to a person');
  // Answered: the quick replies are gone.
  await button.waitFor({ state: 'hidden' });

  await acceptOffer(agent, conversationId);
  await showsActivity(page, 'agent joined the conversation');
  // The console has the history from before the agent joined.
  const postback = await until(
    async () => (await agentTranscript(agent)).find((m) => m.payload === 'natter:person'),
    'the postback at the agent console',
  );
  assert.equal(postback.sender, userId);
  assert.match(postback.text, /Talk to a person/);
  assert.equal((await agentTranscript(agent))[0].seq, 1, 'from the greeting on');
  await done(agent, conversationId, context);
});

test('a visitor who asks for a person sees the request, waits in line while no agent is on, then an agent joins', async () => {
  const context = await browser.newContext(PHONE);
  const page = await visit(context);
  const { conversationId } = await state(page);
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

  // No agent console is open: the visitor waits, and is told their place.
  const queue = page.locator('natter-chat .queue');
  await queue.waitFor();
  assert.match(await queue.textContent(), /^You're next in line — an agent will be with you in about \d+ min$/);

  // An agent comes online and takes it; the line gives way to who joined.
  const agent = await agentConsole();
  await acceptOffer(agent, conversationId);
  await showsActivity(page, 'agent joined the conversation');
  await queue.waitFor({ state: 'hidden' });
  await done(agent, conversationId, context);
});

test('an agent passes back to the bot, takes over again and resolves, and the visitor sees it', async () => {
  const { page, agent, close } = await visitorWithAgent();
  await agent.click('#pass-back');
  await until(
    async () => (await agentTranscript(agent)).some((m) => /assigned to agent · team support · bot answers/.test(m.text)),
    'the bot in control again',
  );
  await agent.click('#take-over');
  await showsActivity(page, 'A person has joined the conversation');
  await agent.click('#resolve');
  await showsActivity(page, 'Conversation resolved');
  // The console shows each change in the thread.
  await until(
    async () => (await agentTranscript(agent)).some((m) => /status resolved · assigned to agent/.test(m.text)),
    'the resolution in the console',
  );
  // The visitor writes again: the conversation opens again.
  await say(page, 'One more question');
  await showsActivity(page, 'Conversation reopened');
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
  await openWidget(page);
  const agent = await agentJoins(page, conversationId);
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
  await done(agent, conversationId, context);
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
  const asked = await shows(page, 'Still there after a reload?');
  // The demo's bot answers every question: the transcript is whole once it has.
  await until(async () => (await transcript(page)).some((m) => m.seq > asked.seq && m.sender === 'bot'), "the bot's answer");
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
