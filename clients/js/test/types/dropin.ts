// Type-checked by `npm run build` (tsc -p test/types): code written against mesa-js-client 1.4.8's
// declarations (lib/index.d.ts) compiles unchanged against ours.
import MesaClient, { ConnectionOptions, DisconnectionOptions, Message } from '../../dist/index.js';

const client = new MesaClient('ws://localhost:4000', { autoConnect: false });
client.onConnected = async (options: ConnectionOptions) => {
  const first: boolean = options.isInitialConnection && options.isInitialSessionConnection && !options.isAutomaticReconnection;
  const user = await client.authenticate({ token: 'secret' }, { shouldSync: true });
  console.log(first, user, client.authenticated);
};
client.onMessage = ({ opcode, data, type, sequence }: Message) => {
  if (type === 'PING') client.send(0, {}, 'PONG');
  console.log(opcode, data, sequence);
};
client.onDisconnected = (code: number, reason: string, { willAttemptReconnect }: DisconnectionOptions) => {
  console.log(code, reason, willAttemptReconnect);
};
client.onError = (error: Error) => console.error(error.message);
client.connect().then(() => client.send(0, { text: 'hi' })).catch(() => {});
client.disconnect();
client.disconnect(1000, 'bye');
console.log(client.url, client.ws, client.messages.sent.length, client.messages.received.length);
