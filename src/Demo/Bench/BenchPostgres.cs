using LiveMigration.Cli.Local;
using LiveMigration.HostNode.Processes;

namespace LiveMigration.Demo.Bench;

/// <summary>
/// A PostgreSQL 15 server for the control-plane bench alone: a fresh cluster (initdb, trust authentication on loopback)
/// under a temp folder owned by the <c>postgres</c> user, with the server's default durability (fsync on: the bench
/// measures a journal as it would run), stopped and deleted at the end.
/// </summary>
public sealed class BenchPostgres : IAsyncDisposable
{
    public const string BinDirectory = "/usr/lib/postgresql/15/bin";
    private const string User = "postgres";
    private readonly string _root = Path.Combine(Path.GetTempPath(), $"lsm-bench-pg-{Guid.NewGuid().ToString("N")[..8]}");
    private bool _started;

    public int Port { get; private set; }

    public static async Task<BenchPostgres> StartAsync()
    {
        if (!File.Exists(Path.Combine(BinDirectory, "initdb")))
            throw new InvalidOperationException($"PostgreSQL 15 is not installed ({BinDirectory}/initdb is missing): apt-get install -y postgresql");
        var server = new BenchPostgres();
        try
        {
            Directory.CreateDirectory(server._root);
            await ProcessRunner.RunCheckedAsync("chown", [$"{User}:{User}", server._root], "BENCH_POSTGRES");
            await server.AsUserAsync("initdb", ["-D", server.Data, "--auth=trust", "--username", User]);
            server.Port = LocalCluster.FreePort();
            await server.AsUserAsync("pg_ctl", ["-D", server.Data, "-l", Path.Combine(server._root, "server.log"), "-w", "-t", "60",
                "-o", $"-p {server.Port} -k {server._root} -c listen_addresses=127.0.0.1 -c max_connections=300", "start"]);
            server._started = true;
            return server;
        }
        catch
        {
            await server.DisposeAsync();
            throw;
        }
    }

    private string Data => Path.Combine(_root, "data");

    /// <summary>A new empty database, as the journal setting <c>lsm local up --journal</c> takes.</summary>
    public async Task<string> CreateDatabaseAsync(string name)
    {
        await AsUserAsync("createdb", ["-h", "127.0.0.1", "-p", Port.ToString(), name]);
        return $"postgres://{User}@127.0.0.1:{Port}/{name}";
    }

    private Task AsUserAsync(string tool, IEnumerable<string> arguments) =>
        ProcessRunner.RunCheckedAsync("runuser", ["-u", User, "--", Path.Combine(BinDirectory, tool), .. arguments], "BENCH_POSTGRES");

    public async ValueTask DisposeAsync()
    {
        try
        {
            if (_started) await AsUserAsync("pg_ctl", ["-D", Data, "-m", "fast", "-w", "-t", "60", "stop"]);
        }
        finally
        {
            if (Directory.Exists(_root)) Directory.Delete(_root, recursive: true);
        }
    }
}
