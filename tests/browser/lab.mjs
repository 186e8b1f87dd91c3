// Drives JupyterLab (or Notebook 7) in headless Chromium through the page only: clicks, keys
// and what the DOM shows; nothing talks to the kernel directly. One scenario per run:
//
//   node lab.mjs <scenario> '<json arguments>'
//
// Arguments: {url, token, root (the served folder), notebook, ui: "lab"|"notebook", shots,
// ...the scenario's own}. The last line of stdout is the scenario's observations as JSON
// (test_browser.py asserts on them). On any failure a screenshot goes to
// <shots>/<scenario>-<notebook>.png and the exit status is 1.
//
// Needs playwright-core under $RUSTLOOP_NODE_DIR/node_modules and /usr/bin/chromium
// (tests/run installs both).
//
// Every Lab page opens in a workspace of its own: in a shared workspace Lab reopens the
// notebooks of earlier scenarios as hidden tabs, and their cells then match the selectors.
// Nothing is typed or run before the notebook's toolbar names the rustloop kernel and shows it
// idle: keys pressed while it still says "No Kernel" are dropped without a trace.

import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const require = createRequire(path.join(process.env.RUSTLOOP_NODE_DIR, 'node_modules', '/'));
const { chromium } = require('playwright-core');

const [scenarioName, rawArgs] = process.argv.slice(2);
const args = JSON.parse(rawArgs || '{}');
// A cold first cell compiles tokio (minutes on 2 busy cores): generous limits everywhere.
const CELL_TIMEOUT = (args.cellTimeout || 900) * 1000;
const UI_TIMEOUT = 60000;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const PANEL = '.jp-NotebookPanel';
const CELLS = `${PANEL} .jp-Notebook .jp-Cell`;
const cellAt = (page, i) => page.locator(CELLS).nth(i);

async function launch() {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'rustloop-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1280, height: 900 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  return { context, userDataDir };
}

/** Opens the notebook (alone on the page) and waits until its rustloop kernel is idle. */
async function open(page, notebook) {
  const file = encodeURIComponent(notebook);
  const workspace = `rustloop-${process.pid}-${Date.now()}`;
  const url =
    args.ui === 'notebook'
      ? `${args.url}/notebooks/${file}?token=${args.token}`
      : `${args.url}/lab/workspaces/${workspace}/tree/${file}?reset&token=${args.token}`;
  await page.goto(url);
  await page.waitForSelector(CELLS, { timeout: 180000 });
  const panels = await page.locator(PANEL).count();
  if (panels !== 1) throw new Error(`expected one notebook on the page, found ${panels}`);
  await waitIdle(page, 300000);
}

/**
 * The notebook's toolbar names the rustloop kernel and shows it idle, no dialog is open, and
 * no cell waits (`[*]`).
 */
async function waitIdle(page, timeout = CELL_TIMEOUT) {
  await page.waitForFunction(
    (panel) => {
      const root = document.querySelector(panel);
      if (!root) return false;
      const indicator = root.querySelector('.jp-Notebook-ExecutionIndicator');
      const kernel = root.querySelector('.jp-Toolbar-kernelName');
      const idle =
        indicator?.getAttribute('data-status') === 'idle' &&
        kernel?.textContent.includes('rustloop') &&
        !document.querySelector('.jp-Dialog');
      const waiting = [...root.querySelectorAll('.jp-InputPrompt')].some((p) =>
        p.textContent.includes('*'),
      );
      return idle && !waiting;
    },
    PANEL,
    { timeout, polling: 100 },
  );
}

/** Clicks a menu bar entry: `top` menu, then the item labelled `label`. */
async function menu(page, top, label) {
  await page.click(`.lm-MenuBar-itemLabel:text-is("${top}")`);
  await page.click(`.lm-Menu-itemLabel:text-is("${label}")`);
}

/** Each cell's prompt (`[3]:`, `[ ]:`). */
const prompts = (page) =>
  page.$$eval(CELLS, (nodes) =>
    nodes.map((cell) => (cell.querySelector('.jp-InputPrompt')?.textContent || '').trim()),
  );

/** Each cell: code or not, prompt and the text of its outputs. */
async function cells(page) {
  return page.$$eval(CELLS, (nodes) =>
    nodes.map((cell) => ({
      code: cell.classList.contains('jp-CodeCell'),
      prompt: (cell.querySelector('.jp-InputPrompt')?.textContent || '').trim(),
      outputs: [...cell.querySelectorAll('.jp-OutputArea-output')].map((o) => o.textContent.trim()),
    })),
  );
}

/** Run All (from the Run menu), then waits until every queued cell ended. */
async function runAll(page) {
  const before = JSON.stringify(await prompts(page));
  await menu(page, 'Run', 'Run All Cells');
  // The prompts change at once (`[*]`); then the kernel works through the queue.
  await page.waitForFunction(
    ([sel, b]) =>
      JSON.stringify([...document.querySelectorAll(sel)].map(
        (c) => (c.querySelector('.jp-InputPrompt')?.textContent || '').trim(),
      )) !== b,
    [CELLS, before],
    { timeout: UI_TIMEOUT, polling: 50 },
  );
  await waitIdle(page);
}

/** Puts `code` into cell `index` (0-based); the cell's editor keeps the focus. */
async function typeInto(page, index, code) {
  const editor = cellAt(page, index).locator('.cm-content');
  await editor.click();
  await page.keyboard.press('Control+a');
  await page.keyboard.press('Delete');
  await page.keyboard.type(code);
  await page.waitForFunction(
    ([sel, i, text]) =>
      document.querySelectorAll(sel)[i]?.querySelector('.cm-content')?.innerText === text,
    [CELLS, index, code],
    { timeout: UI_TIMEOUT },
  );
}

/**
 * Starts cell `index` from its editor with Ctrl+Enter and waits until the page shows it queued
 * or done (its prompt changed). A key press that reached no editor (Lab still in command mode
 * after the click; seen once in about 30 runs) changes nothing, so after 10 s with the prompt
 * unchanged the click and the press are repeated, up to three times; a press that did start
 * the cell turns its prompt to `[*]` at once, so a cell never runs twice.
 */
async function startCell(page, index) {
  const before = (await prompts(page))[index];
  const attempts = 3;
  for (let attempt = 1; ; attempt++) {
    await cellAt(page, index).locator('.cm-content').click();
    await page.keyboard.press('Control+Enter');
    try {
      await page.waitForFunction(
        ([sel, i, b]) => {
          const p = document.querySelectorAll(sel)[i]?.querySelector('.jp-InputPrompt');
          const text = (p?.textContent || '').trim();
          return text !== b && /\[[*0-9]+\]/.test(text);
        },
        [CELLS, index, before],
        { timeout: attempt < attempts ? 10000 : UI_TIMEOUT, polling: 50 },
      );
      return;
    } catch (e) {
      if (attempt >= attempts) throw e;
      console.error(`cell ${index}: Ctrl+Enter started nothing; pressing it again`);
    }
  }
}

/** Runs cell `index` to its end. */
async function runCell(page, index) {
  await startCell(page, index);
  await waitIdle(page);
}

/**
 * Types `args.code` into cell `index` and presses `key` until `shown` appears; returns the
 * number of presses. While rust-analyzer is still loading (a fresh kernel), the kernel answers
 * completions from what it already knows (nothing, for a tokio path) and inspections with
 * nothing, and Lab then shows nothing: a user presses the key again.
 */
async function retryKey(page, index, key, shown) {
  const deadline = Date.now() + CELL_TIMEOUT;
  for (let attempt = 1; ; attempt++) {
    await typeInto(page, index, args.code);
    await page.keyboard.press(key);
    try {
      await shown.waitFor({ timeout: 15000 });
      return attempt;
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await page.keyboard.press('Escape');
    }
  }
}

/** Waits until the outputs of cell `index` contain `text`. */
async function waitForOutput(page, index, text, timeout = CELL_TIMEOUT) {
  await page.waitForFunction(
    ([sel, i, t]) => (document.querySelectorAll(sel)[i]?.querySelector('.jp-Cell-outputWrapper')
      ?.textContent || '').includes(t),
    [CELLS, index, text],
    { timeout, polling: 50 },
  );
}

/** Every state (prompt, outputs, progress value) cell `index` shows, recorded in the page. */
async function recordStates(page, index) {
  await page.evaluate(([sel, i]) => {
    const cell = document.querySelectorAll(sel)[i];
    window.__states = [];
    const snap = () => {
      const state = {
        prompt: (cell.querySelector('.jp-InputPrompt')?.textContent || '').trim(),
        outputs: [...cell.querySelectorAll('.jp-OutputArea-output')].map((o) => o.textContent.trim()),
        progress: [...cell.querySelectorAll('progress')].map((p) => p.value),
      };
      const last = window.__states[window.__states.length - 1];
      if (JSON.stringify(last) !== JSON.stringify(state)) window.__states.push(state);
    };
    snap();
    new MutationObserver(snap).observe(cell, {
      subtree: true, childList: true, characterData: true, attributes: true,
    });
  }, [CELLS, index]);
}

/**
 * Saves the notebook (toolbar button) and returns what the server wrote: each code cell's
 * execution_count, output types and errors (read from the file in the served folder).
 */
async function saveNotebook(page) {
  const file = path.join(args.root, args.notebook);
  const before = fs.statSync(file).mtimeMs;
  await page.locator(`${PANEL} .jp-Toolbar [data-command="docmanager:save"]`).first().click();
  const deadline = Date.now() + UI_TIMEOUT;
  for (;;) {
    if (fs.statSync(file).mtimeMs !== before) {
      try {
        const nb = JSON.parse(fs.readFileSync(file, 'utf8'));
        return nb.cells
          .filter((c) => c.cell_type === 'code')
          .map((c) => ({
            count: c.execution_count,
            outputs: c.outputs.map((o) => o.output_type),
            errors: c.outputs
              .filter((o) => o.output_type === 'error')
              .map((o) => `${o.ename}: ${o.evalue}`),
          }));
      } catch {
        // Still being written.
      }
    }
    if (Date.now() > deadline) throw new Error(`${file} was not saved`);
    await sleep(100);
  }
}

const scenarios = {
  /**
   * Run All `times` times; before each later run, Kernel > Restart Kernel and Clear Outputs.
   * Each run's outputs as shown and as saved, and its seconds.
   */
  async runAll(page) {
    await open(page, args.notebook);
    const runs = [];
    for (let i = 0; i < (args.times || 1); i++) {
      if (i > 0) {
        await menu(page, 'Kernel', 'Restart Kernel and Clear Outputs of All Cells…');
        await page.click('.jp-Dialog-button.jp-mod-accept');
        await page.waitForFunction(
          (sel) => [...document.querySelectorAll(sel)].every(
            (c) => !c.querySelector('.jp-OutputArea-output'),
          ),
          CELLS,
          { timeout: UI_TIMEOUT },
        );
        await waitIdle(page, 300000);
      }
      const started = Date.now();
      await runAll(page);
      const seconds = (Date.now() - started) / 1000;
      runs.push({ seconds, shown: await cells(page), saved: await saveNotebook(page) });
    }
    return { runs };
  },

  /** Run All of a notebook with a failing cell: prompts as shown and as saved. */
  async skippedPrompts(page) {
    await open(page, args.notebook);
    await runAll(page);
    const shown = await cells(page);
    return { shown, saved: await saveNotebook(page) };
  },

  /**
   * Runs the first cell (the evaluator is warm after it), types `code` in the second, presses
   * Tab: the completer's entries and what choosing the first one inserts.
   */
  async completer(page) {
    await open(page, args.notebook);
    await runCell(page, 0);
    const items = page.locator('.jp-Completer .jp-Completer-item');
    const attempts = await retryKey(page, 1, 'Tab', items.first());
    const entries = await items.evaluateAll((nodes) =>
      nodes.map((i) => (i.querySelector('.jp-Completer-match') || i).textContent.trim()),
    );
    // Choose the first entry: what goes into the editor.
    await page.keyboard.press('Enter');
    await page.locator('.jp-Completer').waitFor({ state: 'hidden', timeout: UI_TIMEOUT });
    const inserted = await cellAt(page, 1).locator('.cm-content').innerText();
    return { attempts, entries, inserted };
  },

  /** Runs the first cell, types `code` in the second, presses Shift+Tab: the tooltip's text. */
  async tooltip(page) {
    await open(page, args.notebook);
    await runCell(page, 0);
    const tooltip = page.locator('.jp-Tooltip');
    const attempts = await retryKey(page, 1, 'Shift+Tab', tooltip);
    await page.waitForFunction(
      () => (document.querySelector('.jp-Tooltip')?.textContent || '').trim().length > 0,
      null,
      { timeout: UI_TIMEOUT },
    );
    return { attempts, text: await tooltip.innerText() };
  },

  /**
   * Runs every cell in turn (each after the previous one ended), then waits until `waitFor`
   * shows in any cell: each cell's prompt and outputs.
   */
  async runEach(page) {
    await open(page, args.notebook);
    const count = await page.locator(CELLS).count();
    for (let i = 0; i < count; i++) await runCell(page, i);
    const ranAt = await cells(page);
    await page.waitForFunction(
      ([sel, t]) => [...document.querySelectorAll(sel)].some(
        (c) => (c.querySelector('.jp-Cell-outputWrapper')?.textContent || '').includes(t),
      ),
      [CELLS, args.waitFor],
      { timeout: UI_TIMEOUT, polling: 50 },
    );
    return { ranAt, shown: await cells(page) };
  },

  /**
   * Runs the cells before `before`, starts cell `before`, waits until it printed `ready`
   * (it then waits at its `.await`), clicks the toolbar's stop button, then runs the remaining
   * cells. Reports the seconds from the click to the idle kernel.
   */
  async stop(page) {
    await open(page, args.notebook);
    for (let i = 0; i < args.before; i++) await runCell(page, i);
    await startCell(page, args.before);
    await waitForOutput(page, args.before, args.ready);
    const promptBefore = (await prompts(page))[args.before];
    const clicked = Date.now();
    await page.locator(`${PANEL} .jp-Toolbar [data-command="notebook:interrupt-kernel"]`).first().click();
    await waitIdle(page, UI_TIMEOUT);
    const stopSeconds = (Date.now() - clicked) / 1000;
    const count = await page.locator(CELLS).count();
    for (let i = args.before + 1; i < count; i++) await runCell(page, i);
    return { promptBefore, stopSeconds, shown: await cells(page) };
  },

  /** Runs the first cell and answers the input box with `answer`. */
  async input(page) {
    await open(page, args.notebook);
    await startCell(page, 0);
    const box = page.locator(`${PANEL} .jp-Stdin-input`);
    await box.waitFor({ timeout: CELL_TIMEOUT });
    const prompt = await page.locator(`${PANEL} .jp-Stdin-prompt`).first().innerText();
    await box.fill(args.answer);
    await box.press('Enter');
    await waitIdle(page);
    return { prompt, shown: await cells(page) };
  },

  /**
   * Runs the first cell and records every state its prompt and outputs go through until its
   * output contains `until` and the kernel is idle.
   */
  async watch(page) {
    await open(page, args.notebook);
    await recordStates(page, 0);
    await startCell(page, 0);
    await waitIdle(page);
    await waitForOutput(page, 0, args.until, UI_TIMEOUT);
    const states = await page.evaluate(() => window.__states);
    return { states, shown: await cells(page) };
  },

  /**
   * Runs the first cell (it shows a slider, a button and a label) and the second (a task
   * waiting for the button's first click), then through the page: focuses the slider's handle
   * and presses End, clicks the button named `button`, waits until a label in the first cell's
   * output reads `label`. Then runs the remaining cells. The slider's readout before and after,
   * and each cell's prompt and outputs.
   */
  async widgets(page) {
    await open(page, args.notebook);
    await runCell(page, 0);
    const out = cellAt(page, 0).locator('.jp-Cell-outputWrapper');
    const handle = out.locator('.widget-slider .noUi-handle');
    await handle.waitFor({ timeout: UI_TIMEOUT });
    const readout = out.locator('.widget-slider .widget-readout');
    const readoutBefore = (await readout.innerText()).trim();
    await runCell(page, 1);
    await handle.focus();
    await page.keyboard.press('End');
    await page.waitForFunction(
      ([sel, b]) => (document.querySelectorAll(sel)[0]
        ?.querySelector('.widget-slider .widget-readout')?.textContent || '').trim() !== b,
      [CELLS, readoutBefore],
      { timeout: UI_TIMEOUT, polling: 50 },
    );
    const readoutAfter = (await readout.innerText()).trim();
    await out.locator(`button.jupyter-button:text-is("${args.button}")`).click();
    // The label changes only when the kernel's task saw the click and set its value.
    await page.waitForFunction(
      ([sel, t]) => [...(document.querySelectorAll(sel)[0]?.querySelectorAll('.widget-label') || [])]
        .some((l) => l.textContent.trim() === t),
      [CELLS, args.label],
      { timeout: UI_TIMEOUT, polling: 50 },
    );
    const count = await page.locator(CELLS).count();
    for (let i = 2; i < count; i++) await runCell(page, i);
    return { readoutBefore, readoutAfter, shown: await cells(page) };
  },
};

const { context, userDataDir } = await launch();
const page = context.pages()[0] || (await context.newPage());
const shot = path.join(args.shots || os.tmpdir(), `${scenarioName}-${path.basename(args.notebook || 'x')}.png`);
let status = 0;
try {
  const result = await scenarios[scenarioName](page);
  console.log(JSON.stringify(result));
} catch (e) {
  status = 1;
  console.error(`${scenarioName} failed: ${e.stack || e}`);
  await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
  console.error(`screenshot: ${shot}`);
} finally {
  // Kernels would pile up in the server otherwise (each scenario opens its own notebook);
  // test_browser.py checks that none is left.
  await page.keyboard.press('Escape').catch(() => {});
  await menu(page, 'Kernel', 'Shut Down Kernel').catch(() => {});
  await page.waitForFunction(
    (panel) => !document.querySelector(panel)?.querySelector('.jp-Toolbar-kernelName')
      ?.textContent.includes('rustloop'),
    PANEL,
    { timeout: 30000 },
  ).catch(() => {});
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(status);
