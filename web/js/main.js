// The canvas editor's entry point: builds the App, exposes window.chisel (tests, console) and starts.

import { App } from "./app.js";
import { testSurface } from "./surface.js";

const app = new App();
window.chisel = testSurface(app);

app.start().catch((e) => {
  console.error(e);
  app.fatal(`Chisel failed to start: ${e.message}`);
});

export { app };
