// Building the window's elements (`h`) and updating what is on screen in place (`morph`).
//
// Views are functions of the state that build a fresh tree; `morph` then changes the tree on
// screen to match it, keeping every element that is still there: keyboard focus and selection,
// text typed into fields, open <details>, scroll positions and inline errors survive an update,
// and a screen reader hears only what changed (and only where `aria-live` asks). Elements are
// matched by `id` (or `data-key`) where they have one, else by position and tag.
//
// Rules the views follow for this to hold:
// - event handlers are given to `h` (`onclick`, …), never added later: `morph` carries them over;
// - a handler reaches elements through its event (`e.currentTarget`) or by id, never through a
//   variable holding an element of the tree it was built with (that tree is thrown away);
// - what the user types is not state: a text field's value is set from the state only when
//   the state's value changes;
// - an element with `data-keep` keeps its children when the fresh tree's copy is empty (inline
//   errors: set by a handler, not by the state).

export type Attrs = Record<string, string | boolean | ((e: Event) => void)>;

const handlers = new WeakMap<Element, Map<string, (e: Event) => void>>();

function listen(el: Element, type: string, handler: (e: Event) => void): void {
  let map = handlers.get(el);
  if (!map) {
    map = new Map();
    handlers.set(el, map);
  }
  if (!map.has(type)) el.addEventListener(type, (e) => handlers.get(el)?.get(type)?.(e));
  map.set(type, handler);
}

/** An element with attributes (`true`: present, `false`: absent), handlers (`on…`) and
 * children (`null`s skipped). */
export function h(tag: string, attrs: Attrs = {}, ...children: (Node | string | null)[]): HTMLElement {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (typeof v === "function") listen(el, k.replace(/^on/, ""), v);
    else if (v === true) el.setAttribute(k, "");
    else if (v !== false) el.setAttribute(k, v);
  }
  for (const c of children) if (c !== null) el.append(c);
  return el;
}

function keyOf(node: Node): string | null {
  return node instanceof Element ? node.id || node.getAttribute("data-key") || null : null;
}

function alike(a: Node, b: Node): boolean {
  if (a.nodeType !== b.nodeType) return false;
  if (!(a instanceof Element) || !(b instanceof Element)) return true;
  if (a.tagName !== b.tagName) return false;
  // A choice the state changed under it is built anew: WebKit keeps, per <select>, the last
  // option it told a change for, and would not tell the user's next pick of that option.
  if (a instanceof HTMLSelectElement) return a.value === (b as HTMLSelectElement).value;
  return !(a instanceof HTMLInputElement) || a.type === (b as HTMLInputElement).type;
}

/** Makes `parent`'s children match `next`, keeping the elements that match. */
export function morph(parent: Element, next: Node[]): void {
  const old = Array.from(parent.childNodes);
  const keyed = new Map<string, Node>();
  for (const node of old) {
    const key = keyOf(node);
    if (key !== null) keyed.set(key, node);
  }
  const used = new Set<Node>();
  let cursor = 0;
  const wanted: Node[] = [];
  for (const node of next) {
    const key = keyOf(node);
    let match: Node | undefined;
    if (key !== null) {
      const candidate = keyed.get(key);
      if (candidate && !used.has(candidate) && alike(candidate, node)) match = candidate;
    } else {
      while (cursor < old.length && (used.has(old[cursor]) || keyOf(old[cursor]) !== null)) cursor++;
      const candidate = old[cursor];
      if (candidate && alike(candidate, node)) {
        match = candidate;
        cursor++;
      }
    }
    if (match) {
      used.add(match);
      update(match, node);
      wanted.push(match);
    } else {
      wanted.push(node);
    }
  }
  for (const node of old) if (!used.has(node)) parent.removeChild(node);
  wanted.forEach((node, i) => {
    const here = parent.childNodes[i];
    if (here !== node) parent.insertBefore(node, here ?? null);
  });
}

function update(old: Node, next: Node): void {
  if (!(old instanceof Element) || !(next instanceof Element)) {
    if (old.textContent !== next.textContent) old.textContent = next.textContent;
    return;
  }
  const stateChanged = old.getAttribute("value") !== next.getAttribute("value");
  for (const attr of Array.from(old.attributes)) {
    if (!next.hasAttribute(attr.name)) old.removeAttribute(attr.name);
  }
  for (const attr of Array.from(next.attributes)) {
    if (old.getAttribute(attr.name) !== attr.value) old.setAttribute(attr.name, attr.value);
  }
  // Live properties: a box or a choice shows the state; typed text only when the state changed.
  if (old instanceof HTMLInputElement && next instanceof HTMLInputElement) {
    if (old.type === "checkbox" || old.type === "radio") old.checked = next.hasAttribute("checked");
    else if (stateChanged) old.value = next.getAttribute("value") ?? "";
  }
  if (old instanceof HTMLOptionElement) old.selected = next.hasAttribute("selected");
  const nextHandlers = handlers.get(next);
  const oldHandlers = handlers.get(old);
  if (oldHandlers) for (const type of Array.from(oldHandlers.keys())) if (!nextHandlers?.has(type)) oldHandlers.delete(type);
  if (nextHandlers) for (const [type, handler] of Array.from(nextHandlers)) listen(old, type, handler);
  if (next.hasAttribute("data-keep") && next.childNodes.length === 0) return;
  if (next.hasAttribute("data-raw")) {
    // Markup from elsewhere (the QR code's SVG): replaced whole when it differs.
    if (old.innerHTML !== next.innerHTML) old.innerHTML = next.innerHTML;
    return;
  }
  morph(old, Array.from(next.childNodes));
}
