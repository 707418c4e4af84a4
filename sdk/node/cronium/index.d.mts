// Types of the Cronium runtime helpers (ES module: `import cronium from 'cronium'`).
export * from './index.js';
import * as cronium from './index.js';
export default cronium;
