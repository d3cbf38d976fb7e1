// The widget ships as it is written: no build step, one classic script,
// small enough for every page it is put on.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { gzipSync } from 'node:zlib';
import { widgetSource } from './harness.mjs';

const LIMIT = 30 * 1024;

test('the widget is under 30 KiB gzipped', () => {
  const gzipped = gzipSync(Buffer.from(widgetSource()), { level: 9 }).length;
  console.log(`widget.js: ${Buffer.byteLength(widgetSource())} bytes, ${gzipped} gzipped`);
  assert.ok(gzipped < LIMIT, `${gzipped} bytes gzipped; the limit is ${LIMIT}`);
});

test('the widget is one classic script that needs no build', () => {
  const source = widgetSource();
  assert.match(source, /^\/\/ @ts-check\n/);
  assert.doesNotMatch(source, /^\s*(import|export)\s/m, 'no modules: it loads with a plain script tag');
  assert.doesNotMatch(source, /\brequire\(/, 'no bundler');
});
