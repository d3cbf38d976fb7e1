// Payments in the conversation, in real browsers against a `natter dev`
// whose desk takes payments through stripe-mock (Stripe's API mock,
// started by `scripts/test`): an agent asks for a payment of two lines at
// the console,
// the visitor's widget shows it with a Pay button that opens the checkout
// page, and once Stripe (this test, signing as Stripe does) says it is
// paid, both screens show it.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import {
  STRIPE_WEBHOOK_SECRET, acceptOffer, launchBrowser, openConsole, openWidget, screenshotPath, startNatter, state,
  until, visitorAsking,
} from './harness.mjs';

const stripeMock = process.env.NATTER_TEST_STRIPE_URL;

/** @type {Awaited<ReturnType<typeof startNatter>>} */
let natter;
/** @type {import('playwright-core').Browser} */
let browser;

before(async () => {
  assert.ok(stripeMock, 'NATTER_TEST_STRIPE_URL is not set: run the browser tests with scripts/test web, which starts stripe-mock');
  [natter, browser] = await Promise.all([startNatter({ stripe: stripeMock }), launchBrowser()]);
});

after(async () => {
  await browser?.close();
  await natter?.stop();
});

/** Posts a Stripe event about the payment, signed as Stripe signs; the status code. */
async function stripeSays(type, payment, conversationId) {
  const body = JSON.stringify({
    id: 'evt_' + payment.replaceAll('-', ''),
    object: 'event',
    type,
    data: {
      object: {
        id: 'cs_test_browser',
        object: 'checkout.session',
        client_reference_id: payment,
        payment_status: 'paid',
        metadata: { natter_payment: payment, natter_tenant: 'demo', natter_conversation: conversationId },
      },
    },
  });
  const t = Math.floor(Date.now() / 1000);
  const v1 = createHmac('sha256', STRIPE_WEBHOOK_SECRET).update(`${t}.${body}`).digest('hex');
  const answer = await fetch(natter.payments, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'stripe-signature': `t=${t},v1=${v1}` },
    body,
  });
  return answer.status;
}

test('a visitor pays a payment request in the widget and both screens show it paid', async () => {
  const [ann, ben] = await Promise.all([openConsole(natter, browser, 'agent'), openConsole(natter, browser, 'agent-2')]);
  const { context, page, conversationId } = await visitorAsking(natter, browser);
  const agent = await until(async () => {
    for (const console of [ann, ben]) if (await console.locator(`[data-offer="${conversationId}"]`).count()) return console;
  }, 'an offer at either console');
  await acceptOffer(agent, conversationId);

  // The agent asks for a payment of two lines; the amount is their sum.
  await agent.fill('#payment-description', 'Trail tent, 2 persons');
  await agent.fill('#payment-currency', 'EUR');
  for (const [name, quantity, price] of [['Trail tent', '1', '175.50'], ['Tent pegs', '4', '3.50']]) {
    await agent.click('#payment-add-line');
    const line = agent.locator('#payment-lines li').last();
    await line.getByPlaceholder('name').fill(name);
    await line.getByPlaceholder('quantity').fill(quantity);
    await line.getByPlaceholder('price of one').fill(price);
  }
  assert.equal(await agent.inputValue('#payment-amount'), '189.50');
  await agent.click('#payment button[type=submit]');
  const consoleCard = agent.locator('#messages .pay');
  await consoleCard.locator('.state', { hasText: 'Waiting for payment' }).waitFor({ timeout: 15000 });
  assert.equal(await agent.locator('#payment-lines li').count(), 0, 'the form is cleared once asked');

  // The widget shows the request as a card with its lines and a Pay button.
  const card = page.locator('natter-chat .pay');
  await card.locator('.state', { hasText: 'Waiting for payment' }).waitFor({ timeout: 15000 });
  assert.match(await card.locator('.total').textContent(), /189[.,]50/);
  const lines = await card.locator('li').allTextContents();
  assert.equal(lines.length, 2, String(lines));
  assert.match(lines[0], /1 × Trail tent.*175[.,]50/);
  assert.match(lines[1], /4 × Tent pegs.*14[.,]00/);
  const payment = await card.getAttribute('data-payment');
  assert.ok(payment, 'the card names its payment');
  await page.screenshot({ path: screenshotPath('payment-requested.png') });

  // Pay opens the checkout page in a new tab (stripe-mock's fixture URL
  // does not load here; the tab is enough).
  const [checkout] = await Promise.all([context.waitForEvent('page'), card.locator('a', { hasText: 'Pay' }).click()]);
  await checkout.close();

  // Stripe says it is paid.
  assert.equal(await stripeSays('checkout.session.completed', payment, conversationId), 200);
  await card.locator('.state[data-status="PAYMENT_STATUS_PAID"]', { hasText: 'Paid' }).waitFor({ timeout: 15000 });
  assert.equal(await card.locator('a').isVisible(), false, 'no Pay button once paid');
  await consoleCard.locator('.state[data-status="PAYMENT_STATUS_PAID"]', { hasText: 'Paid' }).waitFor({ timeout: 15000 });
  await page.screenshot({ path: screenshotPath('payment-paid.png') });

  // A replay changes nothing; a reload still shows it paid.
  assert.equal(await stripeSays('checkout.session.completed', payment, conversationId), 200);
  await page.reload();
  await openWidget(page);
  await page.locator('natter-chat .pay .state', { hasText: 'Paid' }).waitFor({ timeout: 15000 });

  await Promise.all([context.close(), ann.context().close(), ben.context().close()]);
});
