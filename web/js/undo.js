// Undo/redo by snapshots: after every edit the workflow (layout included) is serialised; when it differs from
// the last snapshot it becomes a new step. Restoring a step reloads the graph from it.

export class History {
  constructor({ capture, restore, limit = 100, onChange = () => {}, onStep = () => {}, busy = () => false }) {
    this.capture = capture; // () => string
    this.busy = busy; // () => true while a gesture is under way (a drag): its end is the step
    this.restore = restore; // (string) => void
    this.limit = limit;
    this.onChange = onChange;
    this.onStep = onStep; // (before, after): a new step was recorded (a user's edit)
    this.undoStack = [];
    this.redoStack = [];
    this.current = null;
    this.timer = null;
    this.paused = 0;
  }

  /** Start over from the graph as it is now (after opening a file). */
  reset() {
    this.undoStack = [];
    this.redoStack = [];
    this.current = this.capture();
    this.onChange(this);
  }

  /** Record a step if the graph changed since the last one. Cheap to call often. */
  check({ force = false } = {}) {
    if (this.paused) return false;
    if (!force && this.busy()) {
      this.schedule();
      return false;
    }
    const now = this.capture();
    if (this.current === null) {
      this.current = now;
      return false;
    }
    if (now === this.current) return false;
    this.undoStack.push(this.current);
    if (this.undoStack.length > this.limit) this.undoStack.shift();
    this.redoStack = [];
    const before = this.current;
    this.current = now;
    this.onStep(before, now);
    this.onChange(this);
    return true;
  }

  /**
   * Make a change that is not the user's (a run's image growing a node, a seed moving on after queueing): it
   * becomes part of the current state instead of a step. An edit still pending is recorded first.
   */
  absorb(change) {
    if (this.paused || this.current === null) return change();
    if (!this.busy()) this.check({ force: true });
    const result = change();
    if (!this.busy()) {
      const now = this.capture();
      if (now !== this.current) {
        this.current = now;
        this.onChange(this); // kept (autosave), but not a step
      }
    }
    return result;
  }

  /** check() soon, once, after a burst of events. */
  schedule() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.check(), 50);
  }

  get canUndo() { return this.undoStack.length > 0; }
  get canRedo() { return this.redoStack.length > 0; }

  undo() {
    this.check({ force: true });
    if (!this.undoStack.length) return false;
    this.redoStack.push(this.current);
    this.current = this.undoStack.pop();
    this.apply(this.current);
    return true;
  }

  redo() {
    this.check({ force: true });
    if (!this.redoStack.length) return false;
    this.undoStack.push(this.current);
    this.current = this.redoStack.pop();
    this.apply(this.current);
    return true;
  }

  apply(state) {
    this.paused++;
    try {
      this.restore(state);
    } finally {
      this.paused--;
    }
    this.current = this.capture();
    this.onChange(this);
  }
}
