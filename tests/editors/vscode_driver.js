// Drives VS Code (code-server) in headless Chromium like a user: open a file, type, wait for
// ghost text, take a screenshot, accept with Tab, save, read the Settings UI. Prints what it
// saw as JSON. Every step waits for what it needs on screen (or on disk), never a fixed delay.
//   node vscode_driver.js URL FILE_NAME SCREENSHOT FILE_PATH
//   (playwright-core from editors/vscode)
const fs = require("fs");
const path = require("path");
const { chromium } = require(path.join(__dirname, "../../editors/vscode/node_modules/playwright-core"));

const [url, fileName, screenshot, filePath] = process.argv.slice(2);

async function statusBarText(page) {
  const item = page.locator(".statusbar-item", { hasText: "PolyCoder" }).first();
  return (await item.count()) ? (await item.innerText()).trim() : "";
}

async function waitUntil(what, condition, timeout) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    last = await condition();
    if (last) return last;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

async function waitForStatus(page, pattern, timeout) {
  let text = "";
  try {
    return await waitUntil(`status ${pattern}`, async () => {
      text = await statusBarText(page);
      return pattern.test(text) && text;
    }, timeout);
  } catch (error) {
    throw new Error(`status bar never matched ${pattern}: "${text}"`);
  }
}

/** Quick Open until the file's row is listed, then open it and wait for its editor tab. */
async function openFile(page, name) {
  await waitUntil("Quick Open", async () => {
    await page.keyboard.press("Control+P");
    return page.locator(".quick-input-widget input").isVisible();
  }, 60000);
  await page.keyboard.type(name, { delay: 20 });
  const row = page.locator(".quick-input-list .monaco-list-row", { hasText: name }).first();
  await row.waitFor({ timeout: 60000 });
  await page.keyboard.press("Enter");
  await page.locator(".tab.active", { hasText: name }).waitFor({ timeout: 60000 });
  await page.waitForSelector(".monaco-editor .view-lines", { timeout: 30000 });
}

/** The ghost text, once two reads in a row agree (VS Code may render it in parts). */
async function stableGhost(page) {
  const ghost = page.locator(
    ".monaco-editor .ghost-text-decoration, .monaco-editor .ghost-text-decoration-preview, .monaco-editor .ghost-text",
  );
  await ghost.first().waitFor({ timeout: 60000 });
  let previous = null;
  return waitUntil("a stable ghost text", async () => {
    const parts = await ghost.allInnerTexts();
    const text = parts.join("");
    const same = text === previous;
    previous = text;
    return same && text ? { text, parts } : null;
  }, 30000);
}

/** The extension's page of the Settings UI, reached through its table of contents. */
async function settingsLabels(page) {
  await page.keyboard.press("Control+Comma");
  const toc = page.locator(".settings-editor .settings-toc-container .monaco-list-row");
  await toc.first().waitFor({ timeout: 60000 });
  await toc.filter({ hasText: /^Extensions/ }).first().click();
  const entry = toc.filter({ hasText: /^PolyCoder/ }).first();
  await waitUntil("the extension in the table of contents", async () => {
    if (await entry.isVisible()) return true;
    await toc.filter({ hasText: /^Extensions/ }).first().hover();
    await page.mouse.wheel(0, 200);  // the list only renders the rows in view
    return false;
  }, 60000);
  await entry.click();
  const titles = page.locator(".settings-editor .setting-item-title");
  await waitUntil("the extension's settings", async () => {
    const texts = await titles.allInnerTexts();
    return texts.some((text) => /Context Tokens/.test(text));
  }, 60000);
  return { titles: await titles.allInnerTexts(), toc: await toc.allInnerTexts() };
}

async function main() {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
  });
  const result = {};
  const original = fs.readFileSync(filePath, "utf8");
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  try {
    await page.goto(url);
    await page.waitForSelector(".monaco-workbench", { timeout: 90000 });
    await openFile(page, fileName);
    // The extension activates on the language: wait until the client runs and the model is ready.
    result.statusBeforeTyping = await waitForStatus(page, /PolyCoder: ready/, 120000);
    await page.locator(".monaco-editor .view-lines").first().click();
    await page.keyboard.press("Control+End");
    await page.keyboard.type("re", { delay: 80 });
    const ghost = await stableGhost(page);
    result.ghost = ghost.text;
    result.ghostParts = ghost.parts;
    await page.screenshot({ path: screenshot });
    await page.keyboard.press("Tab");
    await page.keyboard.press("Escape");
    await page.keyboard.press("Control+S");
    await waitUntil("the saved file", async () => fs.readFileSync(filePath, "utf8") !== original, 30000);
    result.statusAfter = await waitForStatus(page, /PolyCoder: ready .* ms/, 30000);
    result.settings = await settingsLabels(page);
  } catch (error) {
    await page.screenshot({ path: screenshot.replace(/\.png$/, "-failure.png") });
    throw error;
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(result) + "\n");
}

main().catch((error) => {
  process.stderr.write(String(error && error.stack || error) + "\n");
  process.exit(1);
});
