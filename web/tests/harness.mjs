// What the browser tests share: a `natter dev` of their own (the built
// binary, a fresh data directory, free ports), a headless Chromium, and
// the steps of the demo's visitors (the widget) and agents (the console).
//
// Environment:
//   NATTER_BIN        the natter binary (default: target/debug/natter)
//   NATTER_CHROMIUM   the browser (default: /usr/bin/chromium)
//   NATTER_ARTIFACTS  where screenshots go (default: target/artifacts)

import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { after, before } from 'node:test';

export const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const artifacts = process.env.NATTER_ARTIFACTS || join(repo, 'target/artifacts');

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
];

/** Polls `check` until it returns something truthy, or fails after `ms`. */
export async function until(check, what, ms = 15000) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last: ${last}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A port nothing listens on now, below the ephemeral range. */
let nextPort = 12000 + (process.pid % 400) * 20;
async function freePort() {
  for (;;) {
    const port = nextPort++;
    if (nextPort > 19999) nextPort = 12000;
    const free = await new Promise((ok) => {
      const server = createServer();
      server.once('error', () => ok(false));
      server.listen(port, '127.0.0.1', () => server.close(() => ok(true)));
    });
    if (free) return port;
  }
}

/** The webhook signing secret of a `natter dev` that takes payments. */
export const STRIPE_WEBHOOK_SECRET = 'whsec_browser_test_secret';

/**
 * Starts `natter dev` with its demo, waits until the demo, the gateway and
 * the demo's desk (the agent token needs it) answer, and returns their
 * addresses and a `stop`. With `stripe` (a stripe-mock's URL) its desk
 * takes payments there, and `payments` is its webhook endpoint.
 * @param {{ stripe?: string }} [options]
 */
export async function startNatter(options = {}) {
  const bin = process.env.NATTER_BIN || join(repo, 'target/debug/natter');
  const dir = mkdtempSync(join(tmpdir(), 'natter-web-'));
  const [grpc, http, storage, sync, fanout, desk, demo, deskHttp] = [
    await freePort(), await freePort(), await freePort(), await freePort(), await freePort(), await freePort(),
    await freePort(), await freePort(),
  ];
  const stripe = options.stripe
    ? [
      `http_addr = "127.0.0.1:${deskHttp}"`,
      '[desk.stripe]',
      'api_key = "sk_test_123"',
      `api_base = "${options.stripe}"`,
      `webhook_secrets = ["${STRIPE_WEBHOOK_SECRET}"]`,
    ]
    : [];
  const config = join(dir, 'natter.toml');
  writeFileSync(
    config,
    [
      'grace_period_seconds = 1',
      '[gateway]',
      `grpc_addr = "127.0.0.1:${grpc}"`,
      `http_addr = "127.0.0.1:${http}"`,
      '[storage]',
      `grpc_addr = "127.0.0.1:${storage}"`,
      '[sync]',
      `grpc_addr = "127.0.0.1:${sync}"`,
      '[fanout]',
      `grpc_addr = "127.0.0.1:${fanout}"`,
      '[desk]',
      `grpc_addr = "127.0.0.1:${desk}"`,
      ...stripe,
      '',
    ].join('\n'),
  );
  const logPath = join(dir, 'natter.log');
  const log = [];
  const child = spawn(
    bin,
    ['dev', '--config', config, '--data-dir', join(dir, 'data'), '--demo-addr', `127.0.0.1:${demo}`],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: 'warn' } },
  );
  child.stdout.on('data', (d) => log.push(d));
  child.stderr.on('data', (d) => log.push(d));
  let exited = null;
  child.on('exit', (code, signal) => (exited = `exited with ${code ?? signal}`));
  const tail = () => Buffer.concat(log).toString().slice(-4000);
  const urls = {
    demo: `http://127.0.0.1:${demo}`,
    gateway: `http://127.0.0.1:${http}`,
    payments: options.stripe ? `http://127.0.0.1:${deskHttp}/v1/payments/stripe` : '',
  };
  try {
    await until(async () => {
      if (exited) throw new Error(`natter ${exited}:\n${tail()}`);
      const answers = await Promise.all(
        [urls.demo + '/', urls.gateway + '/healthz', urls.demo + '/agent-token'].map((url) => fetch(url)),
      );
      return answers.every((answer) => answer.ok);
    }, 'natter dev to serve', 60000);
  } catch (e) {
    child.kill('SIGKILL');
    throw new Error(`${e.message}\n${tail()}`);
  }
  return {
    ...urls,
    log: tail,
    async stop() {
      if (!exited) {
        const gone = new Promise((ok) => child.once('exit', ok));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await gone;
        clearTimeout(timer);
      }
      writeFileSync(logPath, Buffer.concat(log));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A `natter dev` and a browser for a test file, started before its tests
 * and stopped after them: read them from the object once tests run.
 * @returns {{ natter: Awaited<ReturnType<typeof startNatter>>, browser: import('playwright-core').Browser }}
 */
export function natterAndBrowser(options = {}) {
  const running = /** @type {any} */ ({});
  before(async () => {
    [running.natter, running.browser] = await Promise.all([startNatter(options), launchBrowser()]);
  });
  after(async () => {
    await running.browser?.close();
    await running.natter?.stop();
  });
  return running;
}

export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.NATTER_CHROMIUM || '/usr/bin/chromium',
    args: CHROMIUM_ARGS,
    // playwright-core adds --headless itself when headless; the flag above
    // keeps the browser headless even for a caller that turns this off.
    headless: true,
  });
}

export const DESKTOP = { viewport: { width: 1280, height: 800 } };
export const PHONE = { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 };

export function screenshotPath(name) {
  mkdirSync(artifacts, { recursive: true });
  return join(artifacts, name);
}

export function widgetSource() {
  return readFileSync(join(repo, 'web/widget.js'), 'utf8');
}

/** A name no other test uses. */
export function unique(prefix) {
  return prefix + Math.random().toString(36).slice(2, 8);
}

// ---- the visitor's side: the demo site with the widget ----

/** Opens the demo site in `context` and waits for the widget to connect. */
export async function visitDemo(natter, context) {
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error('page error:', e.message));
  await page.goto(natter.demo + '/');
  await online(page);
  return page;
}

export async function state(page) {
  return page.evaluate(() => window.Natter.state());
}

export async function online(page, user) {
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

/** Signs in on the demo site as `name` and waits for the widget to follow. */
export async function signIn(page, name) {
  await page.fill('#signin-name', name);
  await page.click('#signin-button');
  return online(page, 'user-' + name);
}

export async function openWidget(page) {
  if ((await page.getAttribute('natter-chat .launcher', 'aria-expanded')) !== 'true') {
    await page.click('natter-chat .launcher');
  }
  await page.locator('natter-chat .panel').waitFor({ state: 'visible' });
}

export async function say(page, text) {
  await page.fill('natter-chat textarea', text);
  await page.press('natter-chat textarea', 'Enter');
}

/** The widget's messages: seq (0 while not stored), sender and text. */
export async function transcript(page) {
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
export async function shows(page, text, ms) {
  return until(async () => (await transcript(page)).find((m) => m.text === text && m.seq > 0), `"${text}" in the widget`, ms);
}

/**
 * A visitor (signed in as `name`, if given) on a phone, who opens the
 * widget and asks for a person.
 */
export async function visitorAsking(natter, browser, name) {
  const context = await browser.newContext(PHONE);
  const page = await visitDemo(natter, context);
  if (name) await signIn(page, name);
  await openWidget(page);
  await say(page, 'Can I talk to a person?');
  await showsActivity(page, 'Asking for a person');
  const { conversationId, userId } = await state(page);
  return { context, page, conversationId, userId, close: () => context.close() };
}

/** Waits until the widget shows a lifecycle line with `text`. */
export async function showsActivity(page, text) {
  await page.locator('natter-chat li.activity', { hasText: text }).waitFor();
}

// ---- the business's side: the agent console ----

/** An agent console of its own (a browser context), signed in as `agent`. */
export async function openConsole(natter, browser, agent = 'agent') {
  const context = await browser.newContext(DESKTOP);
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error(`${agent} page error:`, e.message));
  await page.goto(`${natter.demo}/agent?as=${agent}`);
  await page.locator('#status', { hasText: 'Connected' }).waitFor({ timeout: 15000 });
  return page;
}

/** Accepts the offer of the conversation and waits until it is open as the agent's. */
export async function acceptOffer(agent, conversationId) {
  await agent.locator(`[data-offer="${conversationId}"] button`, { hasText: 'Accept' }).click({ timeout: 15000 });
  await agent.locator(`#mine [data-conversation="${conversationId}"][aria-current="true"]`).waitFor({ timeout: 15000 });
}

/** Sets the agent's presence (`Online` or `Away`) and waits until the desk has it. */
export async function setPresence(agent, presence) {
  await agent.selectOption('#presence', { label: presence });
  await agent.locator(`#presence[data-presence="AGENT_PRESENCE_${presence.toUpperCase()}"]`).waitFor();
}

/** Resolves the open conversation and waits until the desk no longer gives it to the agent. */
export async function resolveConversation(agent, conversationId) {
  await agent.click('#resolve');
  await agent.locator(`#mine [data-conversation="${conversationId}"]`).waitFor({ state: 'detached' });
}

export async function agentReply(agent, text) {
  await agent.fill('#reply-text', text);
  await agent.press('#reply-text', 'Enter');
}

export async function agentTranscript(agent) {
  return agent.evaluate(() =>
    Array.from(document.querySelectorAll('#messages li'), (li) => ({
      seq: Number(li.dataset.seq),
      sender: li.dataset.sender,
      text: li.querySelector('.bubble').textContent,
      payload: li.dataset.payload || '',
    })),
  );
}
