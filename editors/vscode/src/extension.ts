import * as vscode from "vscode";
import {
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  TransportKind,
} from "vscode-languageclient/node";
import { LANGUAGES } from "./languages";

const SERVER_SECTION = "polycoder";
const CLIENT_SECTION = "polycoderLs";
const STATUS_POLL_MS = 1000;
// A window that does not answer for this long is gone (code-server keeps the extension host
// of a closed browser tab for hours): its server is stopped, and started again if it returns.
const WINDOW_CHECK_MS = 5000;
const WINDOW_GONE_MS = 30000;

interface ServerStatus {
  state: "loading" | "ready" | "error";
  model: string;
  device: string;
  dtype: string;
  contextTokens: number;
  error?: string;
  label?: string;
  fallbackFrom?: string;
  last: {
    promptTokens: number;
    reusedTokens: number;
    generatedTokens: number;
    latencyMs: number;
    cacheHit: boolean;
    cancelled: boolean;
  };
  totals: Record<string, number>;
}

/** The server's settings: exactly the keys package.json contributes under "polycoder." */
function serverSettings(context: vscode.ExtensionContext): Record<string, unknown> {
  const contributed = context.extension.packageJSON.contributes.configuration[0].properties;
  const section = vscode.workspace.getConfiguration(SERVER_SECTION);
  const settings: Record<string, unknown> = {};
  for (const key of Object.keys(contributed)) {
    const name = key.slice(SERVER_SECTION.length + 1);
    settings[name] = section.get(name);
  }
  return settings;
}

function serverOptions(): ServerOptions {
  const client = vscode.workspace.getConfiguration(CLIENT_SECTION);
  const python = client.get<string>("pythonPath", "");
  const [command, ...args] = python
    ? [python, "-m", "polycoder_ls"]
    : client.get<string[]>("serverCommand", ["polycoder-ls"]);
  // TransportKind.stdio appends --stdio itself.
  return { command, args, transport: TransportKind.stdio };
}

function shortModelName(model: string): string {
  return model.split(/[\\/]/).filter(Boolean).pop() ?? model;
}

class PolycoderExtension implements vscode.Disposable {
  private client: LanguageClient | undefined;
  private enabled = true;
  private timer: NodeJS.Timeout | undefined;
  private windowCheck: NodeJS.Timeout | undefined;
  private checkingWindow = false;
  private stoppedForWindow = false;
  private readonly output = vscode.window.createOutputChannel("PolyCoder", { log: true });
  private readonly statusBar = vscode.window.createStatusBarItem(
    vscode.StatusBarAlignment.Right,
    100,
  );

  constructor(private readonly context: vscode.ExtensionContext) {
    this.statusBar.name = "PolyCoder";
    this.statusBar.command = "polycoder.showStatus";
    this.statusBar.show();
  }

  async start(): Promise<void> {
    const clientOptions: LanguageClientOptions = {
      documentSelector: LANGUAGES.map((language) => ({ language })),
      outputChannel: this.output,
      initializationOptions: serverSettings(this.context),
      synchronize: { configurationSection: SERVER_SECTION },
      middleware: {
        provideInlineCompletionItems: async (document, position, context, token, next) => {
          if (!this.enabled) {
            return null;
          }
          const result = await next(document, position, context, token);
          void this.refreshStatus();
          return result;
        },
        workspace: {
          configuration: (params) =>
            params.items.map((item) =>
              item.section === SERVER_SECTION ? serverSettings(this.context) : null,
            ),
        },
      },
    };
    this.client = new LanguageClient("polycoder", "PolyCoder", serverOptions(), clientOptions);
    this.showText("$(sync~spin) PolyCoder: starting", "Starting polycoder-ls");
    await this.client.start();
    this.output.info("polycoder: language client started");
    this.pollStatus();
  }

  async stop(): Promise<void> {
    clearTimeout(this.timer);
    const client = this.client;
    this.client = undefined;
    await client?.stop();
  }

  /** Every few seconds, a round trip to the window (setContext runs there). */
  watchWindow(): void {
    this.windowCheck = setInterval(() => void this.checkWindow(), WINDOW_CHECK_MS);
  }

  private async checkWindow(): Promise<void> {
    if (this.checkingWindow) {
      return;
    }
    this.checkingWindow = true;
    const answered = await Promise.race([
      Promise.resolve(
        vscode.commands.executeCommand("setContext", "polycoder.windowAlive", Date.now()),
      ).then(
        () => true,
        () => true,
      ),
      new Promise<boolean>((resolve) => setTimeout(() => resolve(false), WINDOW_GONE_MS)),
    ]);
    this.checkingWindow = false;
    if (!answered && this.client) {
      this.output.warn("polycoder: the window stopped answering; stopping polycoder-ls");
      this.stoppedForWindow = true;
      await this.stop();
    } else if (answered && this.stoppedForWindow) {
      this.stoppedForWindow = false;
      await this.start();
    }
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  toggle(): void {
    this.enabled = !this.enabled;
    void this.refreshStatus();
  }

  showLog(): void {
    this.output.show(true);
  }

  async showStatus(): Promise<void> {
    const status = await this.requestStatus();
    if (!status) {
      void vscode.window.showWarningMessage("PolyCoder: the server is not running.");
      return;
    }
    const { last, totals } = status;
    const lines = [
      `State: ${status.state}${status.error ? ` (${status.error})` : ""}`,
      `Model: ${status.label ?? status.model}, ${status.model} on ${status.device} (${status.dtype}), context ${status.contextTokens} tokens`,
      `Last: ${last.latencyMs.toFixed(0)} ms, ${last.promptTokens} prompt tokens (${last.reusedTokens} reused), ` +
        `${last.generatedTokens} generated${last.cacheHit ? ", cache hit" : ""}${last.cancelled ? ", cancelled" : ""}`,
      `Totals: ${Object.entries(totals).map(([key, value]) => `${key} ${value}`).join(", ")}`,
    ];
    void vscode.window.showInformationMessage(lines.join(" | "));
  }

  private async requestStatus(): Promise<ServerStatus | undefined> {
    if (!this.client?.isRunning()) {
      return undefined;
    }
    try {
      return await this.client.sendRequest<ServerStatus>("polycoder/status", {});
    } catch (error) {
      this.output.warn(`polycoder/status failed: ${String(error)}`);
      return undefined;
    }
  }

  /** Poll while the model loads (or downloads while a fallback serves); afterwards each
   * completion refreshes the status. */
  private pollStatus(): void {
    void this.refreshStatus().then((status) => {
      const pending = status && status.fallbackFrom !== undefined && status.error === undefined;
      if (!status || status.state === "loading" || pending) {
        this.timer = setTimeout(() => this.pollStatus(), STATUS_POLL_MS);
      }
    });
  }

  private async refreshStatus(): Promise<ServerStatus | undefined> {
    const status = await this.requestStatus();
    if (!status) {
      this.showText("$(error) PolyCoder: not running", "polycoder-ls is not running");
    } else if (!this.enabled) {
      this.showText("$(circle-slash) PolyCoder: off", "Suggestions are off (PolyCoder: Toggle)");
    } else if (status.state === "loading") {
      this.showText(`$(sync~spin) PolyCoder: loading ${shortModelName(status.model)}`, status.model);
    } else if (status.state === "error") {
      this.showText("$(error) PolyCoder: error", status.error ?? "the model did not load");
    } else {
      const latency = status.last.latencyMs > 0 ? ` ${status.last.latencyMs.toFixed(0)} ms` : "";
      const label = status.label ?? shortModelName(status.model);
      const icon = status.fallbackFrom ? "$(warning)" : "$(check)";
      this.showText(
        `${icon} PolyCoder: ready ${label} ${status.device}${latency}`,
        `${label}: ${status.model} on ${status.device} (${status.dtype})`,
      );
    }
    return status;
  }

  private showText(text: string, tooltip: string): void {
    this.statusBar.text = text;
    this.statusBar.tooltip = tooltip;
  }

  dispose(): void {
    clearTimeout(this.timer);
    clearInterval(this.windowCheck);
    this.statusBar.dispose();
    this.output.dispose();
  }
}

let extension: PolycoderExtension | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  extension = new PolycoderExtension(context);
  const active = extension;
  context.subscriptions.push(
    active,
    vscode.commands.registerCommand("polycoder.toggle", () => active.toggle()),
    vscode.commands.registerCommand("polycoder.restartServer", () => active.restart()),
    vscode.commands.registerCommand("polycoder.showLog", () => active.showLog()),
    vscode.commands.registerCommand("polycoder.showStatus", () => active.showStatus()),
    vscode.workspace.onDidChangeConfiguration((event) => {
      if (event.affectsConfiguration(CLIENT_SECTION)) {
        void active.restart();
      }
    }),
  );
  await active.start();
  active.watchWindow();
}

export async function deactivate(): Promise<void> {
  await extension?.stop();
}
