'use strict';
// Makes the helpers a global, as in Cronium's other runtimes: `await cronium.input()` with no
// require. Preload it: `node --require <this file> script.js` (the local executor may add that
// flag; NODE_OPTIONS="--require <this file>" does the same by hand).
globalThis.cronium = require('./');
