//! Commands carried as one Lua script's arguments, so that a guard in the
//! script (a writer's marker, a lease's fence) decides in the same atomic
//! step whether they run. A MULTI/EXEC cannot do that: it always runs, even
//! when it reaches Redis after its own retry (held on a dropped connection)
//! or after another process took the lease over.
//!
//! [`Calls`] builds the arguments as a pipeline would be built: each
//! command is its number of words, then its words. A script runs them with
//! [`run_calls_from`]'s Lua loop, which also knows one guard of its own,
//! [`Calls::once`] (the following commands run once per member of a set).

/// The commands of one guarded write, as script arguments.
#[derive(Default)]
pub(crate) struct Calls(Vec<Vec<u8>>, usize);

impl Calls {
    pub(crate) fn cmd(&mut self, name: &str) -> &mut Calls {
        self.1 = self.0.len();
        self.0.push(b"1".to_vec());
        self.0.push(name.as_bytes().to_vec());
        self
    }

    pub(crate) fn arg(&mut self, a: impl redis::ToRedisArgs) -> &mut Calls {
        self.0.extend(a.to_redis_args());
        let words = self.0.len() - self.1 - 1;
        self.0[self.1] = words.to_string().into_bytes();
        self
    }

    /// Runs the next `following` commands only if `member` is new in the
    /// set `set` (it is added): what they do happens once per member, even
    /// when the same member comes again in a later call.
    pub(crate) fn once(&mut self, set: &str, member: &str, following: usize) -> &mut Calls {
        self.cmd(ONCE).arg(set).arg(member).arg(following)
    }

    /// Pipeline style; nothing to do.
    pub(crate) fn ignore(&mut self) -> &mut Calls {
        self
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The arguments, for the script's invocation.
    pub(crate) fn into_args(self) -> Vec<Vec<u8>> {
        self.0
    }
}

/// The name of [`Calls::once`]'s guard (not a Redis command).
const ONCE: &str = "INKSTREAM.ONCE";

/// The Lua loop that runs the [`Calls`] passed from `ARGV[first]` on.
pub(crate) fn run_calls_from(first: usize) -> String {
    format!(
        "local i = {first}
local skip = 0
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  if skip > 0 then
    skip = skip - 1
  elseif ARGV[i + 1] == '{ONCE}' then
    if redis.call('SADD', ARGV[i + 2], ARGV[i + 3]) == 0 then
      skip = tonumber(ARGV[i + 4])
    end
  else
    redis.call(unpack(ARGV, i + 1, i + n))
  end
  i = i + n + 1
end
"
    )
}
