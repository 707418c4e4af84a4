// The global that `global.js` installs: `/// <reference types="cronium/global" />`.
declare global {
  // `var`: a global declaration must be one to land on globalThis
  var cronium: typeof import('./index');
}
export {};
