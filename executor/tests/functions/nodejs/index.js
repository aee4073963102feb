let counter = 0;

class CustomError extends Error {
  constructor(message) {
    super(message);
    this.name = 'CustomError';
  }
}

function failDeeply() {
  throw new CustomError('boom');
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

exports.handler = async (event, context) => {
  switch (event.action) {
    case 'echo':
      return event.data;
    case 'context': {
      const first = context.getRemainingTimeInMillis();
      await sleep(50);
      return {
        function_name: context.functionName,
        function_version: context.functionVersion,
        memory_limit_in_mb: Number(context.memoryLimitInMB),
        aws_request_id: context.awsRequestId,
        invocation_id: context.invocationId,
        remaining_ms: [first, context.getRemainingTimeInMillis()],
      };
    }
    case 'fail':
      failDeeply();
      break;
    case 'sleep':
      await sleep(event.seconds * 1000);
      return 'slept';
    case 'hog': {
      const blocks = [];
      for (let i = 0; i < event.mb; i++) blocks.push(Buffer.alloc(1 << 20, 1));
      return blocks.length;
    }
    case 'log':
      console.log('to-stdout');
      console.error('to-stderr');
      return 'logged';
    case 'env':
      return Object.fromEntries(event.names.map((n) => [n, process.env[n] ?? null]));
    case 'counter':
      counter += 1;
      return counter;
    case 'crash':
      process.abort();
      break;
    case 'unserializable':
      return { big: 1n };
    case 'spin': {
      const end = Date.now() + event.ms;
      let n = 0;
      while (Date.now() < end) n += 1;
      return n;
    }
    default:
      throw new Error(`unknown action ${event.action}`);
  }
  return null;
};
