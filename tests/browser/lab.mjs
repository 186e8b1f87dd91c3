// Drives JupyterLab (or Notebook 7) in headless Chromium through the page only: clicks, keys
// and what the DOM shows; nothing talks to the kernel directly. One scenario per run:
//
//   node lab.mjs <scenario> '<json arguments>'
//
// Arguments: {url, token, root (the served folder), notebook, ui: "lab"|"notebook", shots,
// ...scenario's own}. The last
// line of stdout is the scenario's observations as JSON (test_browser.py asserts on them). On
// any failure a screenshot goes to <shots>/<scenario>-<notebook>.png and the exit status is 1.
// Needs playwright-core under $RUSTLOOP_NODE_DIR/node_modules and /usr/bin/chromium
// (tests/run installs both).

import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const require = createRequire(path.join(process.env.RUSTLOOP_NODE_DIR, 'node_modules', '/'));
const { chromium } = require('playwright-core');

const [scenarioName, rawArgs] = process.argv.slice(2);
const args = JSON.parse(rawArgs || '{}');
const CELL_TIMEOUT = (args.cellTimeout || 600) * 1000;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

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

/** Opens the notebook and waits until its kernel is idle. */
async function open(page, notebook) {
  const route = args.ui === 'notebook' ? 'notebooks' : 'lab/tree';
  await page.goto(`${args.url}/${route}/${encodeURIComponent(notebook)}?token=${args.token}`);
  await page.waitForSelector('.jp-Notebook .jp-Cell', { timeout: 120000 });
  await waitIdle(page, 180000);
  if (process.env.RUSTLOOP_BROWSER_DEBUG) {
    await page.screenshot({ path: path.join(args.shots, 'opened.png') });
  }
}

/** The kernel is idle (toolbar execution indicator) and no cell waits (`[*]`). */
async function waitIdle(page, timeout = CELL_TIMEOUT) {
  await page.waitForFunction(
    () => {
      // The notebook toolbar's kernel indicator (the status bar has another one).
      const indicator = document.querySelector(
        '.jp-NotebookPanel-toolbar .jp-Notebook-ExecutionIndicator',
      );
      const kernel = document.querySelector('.jp-NotebookPanel-toolbar .jp-Toolbar-kernelName');
      const idle =
        indicator &&
        indicator.getAttribute('data-status') === 'idle' &&
        (!kernel || kernel.textContent.includes('rustloop')) &&
        !document.querySelector('.jp-Dialog') &&
        !document.querySelector('.jp-NotebookPanel .jp-Spinner');
      const busy = [...document.querySelectorAll('.jp-InputPrompt')].some((p) =>
        p.textContent.includes('*'),
      );
      return idle && !busy;
    },
    null,
    { timeout, polling: 200 },
  );
}

/** Clicks a menu bar entry: `top` menu, then the item labelled `label`. */
async function menu(page, top, label) {
  await page.click(`.lm-MenuBar-itemLabel:text-is("${top}")`);
  await page.click(`.lm-Menu-itemLabel:text-is("${label}")`);
}

async function runAll(page) {
  await menu(page, 'Run', 'Run All Cells');
  // Run All marks every code cell `[*]` at once; wait for that, then for the end.
  await page.waitForFunction(
    () => [...document.querySelectorAll('.jp-InputPrompt')].some((p) => p.textContent.includes('*')),
    null,
    { timeout: 30000, polling: 50 },
  ).catch(() => {});
  await waitIdle(page);
}

/** Each cell: its type, prompt (`[3]:`, `[ ]:`) and the text of its outputs. */
async function cells(page) {
  return page.$$eval('.jp-Notebook .jp-Cell', (nodes) =>
    nodes.map((cell) => ({
      code: cell.classList.contains('jp-CodeCell'),
      prompt: (cell.querySelector('.jp-InputArea .jp-InputPrompt')?.textContent || '').trim(),
      outputs: [...cell.querySelectorAll('.jp-OutputArea-output')].map((o) => o.textContent.trim()),
    })),
  );
}

/** Puts `code` into cell `index` (0-based; the notebook must have that many cells). */
async function typeInto(page, index, code) {
  const editor = page.locator('.jp-Notebook .jp-Cell').nth(index).locator('.cm-content');
  await editor.click();
  await page.keyboard.press('Control+a');
  await page.keyboard.press('Delete');
  await page.keyboard.type(code, { delay: 20 });
  await sleep(500);
}

const cellAt = (page, i) => page.locator('.jp-Notebook .jp-Cell').nth(i);

/** Starts cell `index` (selects it, Run menu) and waits until it is queued. */
async function startCell(page, index) {
  await cellAt(page, index).locator('.jp-InputPrompt').click();
  await menu(page, 'Run', 'Run Selected Cell and Do not Advance');
  await page.waitForFunction(
    (i) => {
      const cell = document.querySelectorAll('.jp-Notebook .jp-Cell')[i];
      const prompt = cell?.querySelector('.jp-InputPrompt')?.textContent || '';
      return /\[[*0-9]+\]/.test(prompt);
    },
    index,
    { timeout: 30000, polling: 50 },
  );
}

/** Runs cell `index` to its end. */
async function runCell(page, index) {
  await startCell(page, index);
  await waitIdle(page);
}

/** The toolbar's stop (interrupt) button. */
async function clickStop(page) {
  const byCommand = page.locator('.jp-NotebookPanel-toolbar [data-command="notebook:interrupt-kernel"]');
  if (await byCommand.count()) {
    await byCommand.first().click();
  } else {
    await page.locator('.jp-NotebookPanel-toolbar [title^="Interrupt"]').first().click();
  }
}

/**
 * Saves the notebook (Ctrl+S) and returns what the server wrote: each code cell's
 * execution_count and output types (read from the file in the served folder, `args.root`).
 */
async function saveNotebook(page) {
  const file = path.join(args.root, args.notebook);
  const before = fs.statSync(file).mtimeMs;
  await page.keyboard.press('Control+s');
  const deadline = Date.now() + 30000;
  while (fs.statSync(file).mtimeMs === before && Date.now() < deadline) await sleep(100);
  await sleep(300);
  const nb = JSON.parse(fs.readFileSync(file, 'utf8'));
  return nb.cells
    .filter((c) => c.cell_type === 'code')
    .map((c) => ({
      count: c.execution_count,
      outputs: c.outputs.map((o) => o.output_type),
      errors: c.outputs.filter((o) => o.output_type === 'error').map((o) => `${o.ename}: ${o.evalue}`),
    }));
}

const scenarios = {
  /** Run All `times` times (restarting the kernel in between): every run's outputs. */
  async runAll(page) {
    await open(page, args.notebook);
    const runs = [];
    for (let i = 0; i < (args.times || 1); i++) {
      if (i > 0) {
        await menu(page, 'Kernel', 'Restart Kernel…');
        await page.click('.jp-Dialog-button.jp-mod-accept');
        await waitIdle(page, 180000);
      }
      await runAll(page);
      runs.push({ shown: await cells(page), saved: await saveNotebook(page) });
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
    await typeInto(page, 1, args.code);
    await page.keyboard.press('Tab');
    await page.waitForSelector('.jp-Completer .jp-Completer-item', { timeout: 120000 });
    const entries = await page.$$eval('.jp-Completer .jp-Completer-item', (items) =>
      items.map((i) => i.querySelector('.jp-Completer-match')?.textContent || i.textContent),
    );
    // Take the first entry: what goes into the editor.
    await page.keyboard.press('Enter');
    await sleep(300);
    const inserted = await cellAt(page, 1).locator('.cm-content').innerText();
    return { entries, inserted };
  },

  /** Runs the first cell, types `code` in the second, presses Shift+Tab: the tooltip's text. */
  async tooltip(page) {
    await open(page, args.notebook);
    await runCell(page, 0);
    await typeInto(page, 1, args.code);
    await page.keyboard.press('Shift+Tab');
    const tooltip = await page.waitForSelector('.jp-Tooltip', { timeout: 120000 });
    await sleep(300);
    return { text: await tooltip.innerText() };
  },

  /**
   * Runs cells one by one (each after the previous ended), waiting `pauseMs` after each and
   * `finalWaitMs` at the end: outputs per cell (late output of tasks).
   */
  async runEach(page) {
    await open(page, args.notebook);
    const count = await page.locator('.jp-Notebook .jp-Cell').count();
    for (let i = 0; i < count; i++) {
      await runCell(page, i);
      await sleep(args.pauseMs || 0);
    }
    await sleep(args.finalWaitMs || 0);
    return { shown: await cells(page) };
  },

  /**
   * Runs the cells before `before`, starts cell `before`, clicks the toolbar's stop button
   * after `afterMs`, then runs the remaining cells.
   */
  async stop(page) {
    await open(page, args.notebook);
    for (let i = 0; i < args.before; i++) await runCell(page, i);
    await startCell(page, args.before);
    await sleep(args.afterMs || 3000);
    const prompt = await cellAt(page, args.before).locator('.jp-InputPrompt').innerText();
    const stillRunning = prompt.includes('*');
    await clickStop(page);
    await waitIdle(page, 60000);
    const count = await page.locator('.jp-Notebook .jp-Cell').count();
    for (let i = args.before + 1; i < count; i++) await runCell(page, i);
    return { stillRunning, shown: await cells(page) };
  },

  /** Runs the first cell, answers the input box with `answer`. */
  async input(page) {
    await open(page, args.notebook);
    await startCell(page, 0);
    const box = page.locator('.jp-Stdin-input');
    await box.waitFor({ timeout: CELL_TIMEOUT });
    const prompt = await page.locator('.jp-Stdin-prompt').first().innerText();
    await box.fill(args.answer);
    await box.press('Enter');
    await waitIdle(page);
    return { prompt, shown: await cells(page) };
  },

  /** Runs the first cell and samples what its output shows every `everyMs` for `forMs`. */
  async watch(page) {
    await open(page, args.notebook);
    await startCell(page, 0);
    const samples = [];
    const end = Date.now() + args.forMs;
    while (Date.now() < end) {
      const shown = await cells(page);
      samples.push({ prompt: shown[0].prompt, outputs: shown[0].outputs });
      await sleep(args.everyMs || 200);
    }
    await waitIdle(page);
    return { samples, shown: await cells(page) };
  },
};

const { context, userDataDir } = await launch();
const page = context.pages()[0] || (await context.newPage());
const shot = path.join(args.shots || os.tmpdir(), `${scenarioName}-${path.basename(args.notebook || 'x')}.png`);
let status = 0;
try {
  const result = await scenarios[scenarioName](page);
  await page.screenshot({ path: shot.replace(/\.png$/, '-end.png'), fullPage: true });
  console.log(JSON.stringify(result));
} catch (e) {
  status = 1;
  console.error(`${scenarioName} failed: ${e.stack || e}`);
  await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
  console.error(`screenshot: ${shot}`);
} finally {
  // Kernels would pile up in the server otherwise (each scenario opens its own notebook).
  await page.keyboard.press('Escape').catch(() => {});
  await menu(page, 'Kernel', 'Shut Down Kernel').catch(() => {});
  await sleep(500);
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(status);
