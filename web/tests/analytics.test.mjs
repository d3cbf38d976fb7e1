// The console's analytics page in a real browser, against a `natter dev`
// of its own: a visitor is answered, the conversation resolved and rated
// in the widget's satisfaction survey, and the agent's analytics page then
// charts it and counts it in the agent's row.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  acceptOffer, agentReply, natterAndBrowser, openConsole, resolveConversation, screenshotPath, shows, until,
  visitorAsking,
} from './harness.mjs';

const running = natterAndBrowser();

test('a rated conversation shows on the analytics page', async () => {
  const { natter, browser } = running;
  // Only `agent` is at a console, so the desk offers it the conversation.
  const ann = await openConsole(natter, browser, 'agent');
  const { page, conversationId, close } = await visitorAsking(natter, browser);
  await acceptOffer(ann, conversationId);
  await agentReply(ann, 'Hi! Happy to help with your tent.');
  await shows(page, 'Hi! Happy to help with your tent.');
  await resolveConversation(ann, conversationId);

  // The survey comes into the widget once the conversation is resolved.
  const survey = page.locator('natter-chat li.msg', { hasText: 'How did we do?' }).locator('form');
  await survey.waitFor({ timeout: 15000 });
  await survey.locator('button[aria-label="5 stars"]').click();
  await survey.locator('input, textarea').last().fill('Quick and friendly');
  await survey.locator('button[type="submit"]').click();

  await ann.click('#view');
  await ann.locator('#analytics').waitFor();
  const row = ann.locator('#per-agent tr[data-agent="agent"]');
  // The figures follow the events a moment later: ask again until they do.
  const cells = await until(async () => {
    await ann.click('#analytics-refresh');
    if (!(await row.count())) return undefined;
    const texts = await row.locator('td').allTextContents();
    return texts[7] === '5.0 (1)' ? texts : undefined;
  }, "the agent's row with the rating");
  const [agent, opened, replies, , , resolved] = cells;
  assert.deepEqual([agent, opened, replies, resolved], ['agent', '1', '1', '1']);
  for (const title of ['Volume', 'First response', 'Resolution', 'CSAT']) {
    await ann.locator(`figure[data-chart="${title}"] canvas`).waitFor();
  }
  await ann.screenshot({ path: screenshotPath('console-analytics.png') });

  // Back to the conversations: the rating is not lead data, so it is not
  // on the customer's contact.
  await ann.click('#view');
  await ann.locator('nav[aria-label="Desk"]').waitFor();
  await ann.locator('#contact section').first().waitFor();
  assert.equal(await ann.locator('#contact dt', { hasText: /^(score|comment)$/ }).count(), 0);
  await close();
});
