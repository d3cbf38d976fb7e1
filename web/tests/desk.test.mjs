// The support desk in real browsers, against a `natter dev` of its own:
// the demo's two agents at their consoles, and visitors with the widget
// who ask for a person, wait in line, are answered, transferred and
// resolved; and what the console gives the agent: the customer's contact,
// the team's canned replies, internal notes and quoted replies.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  PHONE, acceptOffer, agentReply, launchBrowser, online, openConsole, openWidget, resolveConversation, say,
  screenshotPath, setPresence, shows, showsActivity, startNatter, state, transcript, until, visitDemo, visitorAsking,
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

/** Both demo agents at their consoles, each in a browser context of their own, by user id. */
async function consoles() {
  const [ann, ben] = await Promise.all([openConsole(natter, browser, 'agent'), openConsole(natter, browser, 'agent-2')]);
  return { ann, ben, byId: { agent: ann, 'agent-2': ben }, close: () => Promise.all([ann.context().close(), ben.context().close()]) };
}

/** The console of the agent the conversation is offered to, and that agent's id. */
async function offeredAt(agents, conversationId) {
  const id = await until(async () => {
    for (const [id, agent] of Object.entries(agents.byId)) {
      if (await agent.locator(`[data-offer="${conversationId}"]`).count()) return id;
    }
  }, 'an offer at either console');
  return { id, agent: agents.byId[id] };
}

test('a visitor who asks for a person is offered to an agent, transferred to the other, and resolved', async () => {
  const agents = await consoles();
  const visitor = await visitorAsking(natter, browser);
  const { conversationId, page } = visitor;

  // Whichever agent it is offered to takes it.
  const { id: firstId, agent: firstConsole } = await offeredAt(agents, conversationId);
  const secondId = firstId === 'agent' ? 'agent-2' : 'agent';
  const secondConsole = agents.byId[secondId];
  await acceptOffer(firstConsole, conversationId);
  await showsActivity(page, `${firstId} joined the conversation`);
  await agentReply(firstConsole, 'Hi! Let me find someone who knows tents.');
  await shows(page, 'Hi! Let me find someone who knows tents.');

  // Transferred to the other agent: offered to them alone.
  await firstConsole.selectOption('#transfer-to', `agent:${secondId}`);
  await firstConsole.click('#transfer button');
  await firstConsole.locator(`#mine [data-conversation="${conversationId}"]`).waitFor({ state: 'detached' });
  await acceptOffer(secondConsole, conversationId);
  await showsActivity(page, `${secondId} joined the conversation`);
  await agentReply(secondConsole, 'Hello, tents are my thing.');
  await shows(page, 'Hello, tents are my thing.');

  await resolveConversation(secondConsole, conversationId);
  await showsActivity(page, 'Conversation resolved');
  await Promise.all([visitor.close(), agents.close()]);
});

test('visitors wait in line while no agent has room, and are offered once one has', async () => {
  const { ann, ben, close } = await consoles();
  await setPresence(ben, 'Away');
  // Only Ann takes conversations: the first visitor is hers.
  const maya = await visitorAsking(natter, browser, 'maya');
  await acceptOffer(ann, maya.conversationId);
  await showsActivity(maya.page, 'agent joined the conversation');
  await agentReply(ann, 'Hi Maya! Which order is it about?');
  await shows(maya.page, 'Hi Maya! Which order is it about?');

  // Ann steps away too: the next visitors wait, each told their place.
  await setPresence(ann, 'Away');
  const waiting = [await visitorAsking(natter, browser), await visitorAsking(natter, browser)];
  const lines = waiting.map(({ page }) => page.locator('natter-chat .queue'));
  await lines[0].waitFor();
  assert.match(await lines[0].textContent(), /^You're next in line — an agent will be with you in about \d+ min$/);
  await until(async () => /^1 person ahead of you · about \d+ min$/.test(await lines[1].textContent()), 'the second in line');
  for (const { conversationId } of waiting) await ann.locator(`#queue [data-waiting="${conversationId}"]`).waitFor();
  await ann.locator(`#team .agent`, { hasText: 'agent-2 · away' }).waitFor();
  // The README's picture of the console (docs/console.png).
  await ann.screenshot({ path: screenshotPath('console.png') });
  await waiting[1].page.screenshot({ path: screenshotPath('widget-queue.png') });
  // A reload keeps the place: the widget asks the desk to tell it again.
  await waiting[1].page.reload();
  await online(waiting[1].page);
  await openWidget(waiting[1].page);
  await until(async () => /^1 person ahead of you/.test(await lines[1].textContent()), 'the place after a reload');

  // Ben is back: both are offered to him, and the lines give way to him.
  await setPresence(ben, 'Online');
  for (const [i, { conversationId, page }] of waiting.entries()) {
    await acceptOffer(ben, conversationId);
    await showsActivity(page, 'agent-2 joined the conversation');
    await lines[i].waitFor({ state: 'hidden' });
  }
  await ann.locator('#queue', { hasText: 'Nobody is waiting' }).waitFor();

  // The desk as the next test expects it: both online, holding nothing
  // (an agent's away stays set, and what they hold goes back to the queue).
  await setPresence(ann, 'Online');
  await resolveConversation(ann, maya.conversationId);
  for (const { conversationId } of waiting) {
    await ben.click(`#mine [data-conversation="${conversationId}"]`);
    await resolveConversation(ben, conversationId);
  }
  await Promise.all([maya.close(), ...waiting.map((v) => v.close()), close()]);
});

test("the console shows the customer's contact as their lead form fills it, and offers the team's canned replies", async () => {
  const agents = await consoles();
  const visitor = await visitorAsking(natter, browser);
  const { conversationId, userId, page } = visitor;
  const { agent } = await offeredAt(agents, conversationId);
  await acceptOffer(agent, conversationId);
  const contact = agent.locator(`#contact [data-contact="${userId}"]`);
  await contact.locator('.none', { hasText: 'No contact details yet' }).waitFor();

  // The visitor answers the lead form; the desk fills in their contact.
  await agent.click('#send-lead-form');
  const form = page.locator('natter-chat form.form');
  await form.locator('input[name=name]').fill('Rosa Trail');
  await form.locator('input[name=email]').fill('Rosa@Example.com');
  await form.locator('button').click();
  await contact.locator('dd', { hasText: 'Rosa Trail' }).waitFor();
  const details = await contact.locator('dt, dd').allTextContents();
  assert.deepEqual(details, ['Name', 'Rosa Trail', 'Email', 'rosa@example.com']);

  // `/` offers the team's canned replies; `/ref` only the refund one, which
  // Enter puts in the composer and Enter again sends.
  const options = agent.locator('#canned [role=option]');
  await agent.fill('#reply-text', '/');
  await until(async () => (await options.count()) >= 3, 'the canned replies');
  await agent.fill('#reply-text', '/ref');
  await until(async () => (await options.count()) === 1, 'only the refund reply');
  assert.equal(await options.first().getAttribute('data-shortcut'), '/refund');
  const refund = await options.first().locator('.text').textContent();
  await agent.press('#reply-text', 'Enter');
  await agent.locator('#canned').waitFor({ state: 'hidden' });
  assert.equal(await agent.inputValue('#reply-text'), refund);
  await agent.press('#reply-text', 'Enter');
  await shows(page, refund);

  await resolveConversation(agent, conversationId);
  await Promise.all([visitor.close(), agents.close()]);
});

test('an agent replies quoting the question and hands over with notes the visitor never sees', async () => {
  const agents = await consoles();
  const visitor = await visitorAsking(natter, browser);
  const { conversationId, page } = visitor;
  const { id, agent } = await offeredAt(agents, conversationId);
  const otherId = id === 'agent' ? 'agent-2' : 'agent';
  const other = agents.byId[otherId];
  await acceptOffer(agent, conversationId);
  await showsActivity(page, `${id} joined the conversation`);
  const question = 'Does the Trail tent come in green?';
  await say(page, question);
  const asked = agent.locator('#messages li', { hasText: question });
  await asked.waitFor();

  // A reply quoting the question, in the widget and the console.
  await asked.locator('.quote-button').click();
  await agent.locator('#quoting', { hasText: question }).waitFor();
  await agentReply(agent, 'Yes, in green and in sand.');
  const answer = page.locator('natter-chat li.msg', { hasText: 'Yes, in green and in sand.' });
  await answer.locator('.quote', { hasText: question }).waitFor();
  await agent.locator('#messages li', { hasText: 'Yes, in green and in sand.' }).locator('.quote', { hasText: question }).waitFor();

  // A note for whoever takes over, then the transfer: the other agent
  // finds the note, and sees the next one as it is written.
  const notes = ['Wants it before Friday', 'Offered free shipping'];
  await agent.check('#as-note');
  await agentReply(agent, notes[0]);
  await agent.locator('#messages li.note', { hasText: notes[0] }).waitFor();
  await agent.selectOption('#transfer-to', `agent:${otherId}`);
  await agent.click('#transfer button');
  await acceptOffer(other, conversationId);
  await other.locator('#messages li.note', { hasText: notes[0] }).waitFor();
  await agentReply(agent, notes[1]);
  await other.locator('#messages li.note', { hasText: notes[1] }).waitFor();

  await agentReply(other, 'Green it is, shipping free.');
  await shows(page, 'Green it is, shipping free.');
  const seen = (await transcript(page)).map((m) => m.text).join('\n');
  assert.ok(notes.every((n) => !seen.includes(n)), `notes never reach the widget: ${seen}`);
  await resolveConversation(other, conversationId);
  await Promise.all([visitor.close(), agents.close()]);
});

test("the demo's bot answers from the FAQ, quoting the question, and offers a person when unsure", async () => {
  const context = await browser.newContext(PHONE);
  const page = await visitDemo(natter, context);
  await openWidget(page);
  await say(page, 'How long does shipping take?');
  const answer = page.locator('natter-chat li.msg', { hasText: 'Standard shipping takes 3 to 5 business days' });
  await answer.locator('.quote', { hasText: 'How long does shipping take?' }).waitFor();
  await say(page, 'Do you repair bicycles?');
  await page.locator('natter-chat li.msg', { hasText: "I'm not sure I can answer that one" }).waitFor();
  await page.locator('natter-chat .choices button', { hasText: 'Talk to a person' }).last().click();
  await showsActivity(page, 'Asking for a person');
  await context.close();
});
