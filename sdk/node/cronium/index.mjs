// The ES module face of the CommonJS implementation: one module instance, so that an error
// thrown by a call made through `require('cronium')` is still `instanceof` the classes
// imported here.
import cronium from './index.js';

export const {
  Client,
  CroniumError,
  CroniumAPIError,
  CroniumTimeoutError,
  input,
  output,
  getVariable,
  setVariable,
  setCondition,
  getCondition,
  event,
  executeToolAction,
  sendEmail,
  sendSlackMessage,
  sendDiscordMessage,
  version,
} = cronium;

export default cronium;
