// What the browser tests share: a `natter dev` of their own (the built
// binary, a fresh data directory, free ports) and a headless Chromium.
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

/**
 * Starts `natter dev` with its demo, waits until the demo and the gateway
 * answer, and returns their addresses and a `stop`.
 */
export async function startNatter() {
  const bin = process.env.NATTER_BIN || join(repo, 'target/debug/natter');
  const dir = mkdtempSync(join(tmpdir(), 'natter-web-'));
  const [grpc, http, storage, sync, fanout, desk, demo] = [
    await freePort(), await freePort(), await freePort(), await freePort(), await freePort(), await freePort(),
    await freePort(),
  ];
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
  };
  try {
    await until(async () => {
      if (exited) throw new Error(`natter ${exited}:\n${tail()}`);
      const [site, health] = await Promise.all([fetch(urls.demo + '/'), fetch(urls.gateway + '/healthz')]);
      return site.ok && health.ok;
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
