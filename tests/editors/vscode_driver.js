// Drives VS Code (code-server) in headless Chromium like a user: open a file, type, wait for
// ghost text, take a screenshot, accept with Tab, save. Prints what it saw as JSON.
//   node vscode_driver.js URL FILE_NAME SCREENSHOT   (playwright-core from editors/vscode)
const path = require("path");
const { chromium } = require(path.join(__dirname, "../../editors/vscode/node_modules/playwright-core"));

const [url, fileName, screenshot] = process.argv.slice(2);

async function statusBarText(page) {
  const item = page.locator(".statusbar-item", { hasText: "PolyCoder" }).first();
  return (await item.count()) ? (await item.innerText()).trim() : "";
}

async function waitForStatus(page, pattern, timeout) {
  const deadline = Date.now() + timeout;
  let text = "";
  while (Date.now() < deadline) {
    text = await statusBarText(page);
    if (pattern.test(text)) return text;
    await page.waitForTimeout(250);
  }
  throw new Error(`status bar never matched ${pattern}: "${text}"`);
}

async function main() {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
  });
  const result = {};
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  try {
    await page.goto(url);
    await page.waitForSelector(".monaco-workbench", { timeout: 90000 });
    await page.waitForTimeout(2000);
    await page.keyboard.press("Control+P");
    await page.waitForSelector(".quick-input-widget input", { timeout: 30000 });
    await page.keyboard.type(fileName, { delay: 20 });
    await page.waitForTimeout(500);
    await page.keyboard.press("Enter");
    await page.waitForSelector(".monaco-editor .view-lines", { timeout: 30000 });
    // The extension activates on the language: wait until the client runs and the model is ready.
    result.statusBeforeTyping = await waitForStatus(page, /PolyCoder: ready/, 120000);
    await page.locator(".monaco-editor .view-lines").first().click();
    await page.keyboard.press("Control+End");
    await page.keyboard.type("re", { delay: 80 });
    // VS Code may render one suggestion as several inline decorations: read them all, in order.
    const ghost = page.locator(
      ".monaco-editor .ghost-text-decoration, .monaco-editor .ghost-text-decoration-preview, .monaco-editor .ghost-text",
    );
    await ghost.first().waitFor({ timeout: 30000 });
    await page.waitForTimeout(300);
    result.ghost = (await ghost.allInnerTexts()).join("");
    result.ghostParts = await ghost.allInnerTexts();
    await page.screenshot({ path: screenshot });
    await page.keyboard.press("Tab");
    await page.waitForTimeout(300);
    await page.keyboard.press("Escape");
    await page.keyboard.press("Control+S");
    await page.waitForTimeout(1000);
    result.statusAfter = await waitForStatus(page, /PolyCoder: ready .* ms/, 10000);
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
