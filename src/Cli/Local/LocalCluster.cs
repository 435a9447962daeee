using System.Diagnostics;
using System.Net.Sockets;

namespace LiveMigration.Cli.Local;

/// <summary>One process of a local cluster: its name, pid and log file.</summary>
public sealed record NodeProcess(string Name, Process Process, string LogPath, IReadOnlyList<string> Arguments)
{
    public int Pid => Process.Id;
    public bool Running => !Process.HasExited;
}

/// <summary>
/// Starts Coordinator and HostNode processes on loopback from the repository's build output, each with
/// its output in a log file (never a pipe the demo must keep reading), and stops them by pid.
/// </summary>
public sealed class LocalCluster : IAsyncDisposable
{
    private readonly List<NodeProcess> _nodes = [];
    private readonly Dictionary<string, int> _hostPorts = new();
    private readonly string _binRoot;

    public LocalCluster(string dataDirectory, string? configuration = null)
    {
        DataDirectory = dataDirectory;
        RepositoryRoot = FindRepositoryRoot();
        configuration ??= AppContext.BaseDirectory.Contains($"{Path.DirectorySeparatorChar}Release{Path.DirectorySeparatorChar}") ? "Release" : "Debug";
        _binRoot = configuration;
        CoordinatorPort = FreePort();
        HttpPort = FreePort();
    }

    public string DataDirectory { get; }
    public string RepositoryRoot { get; }
    public int CoordinatorPort { get; }
    public int HttpPort { get; }
    /// <summary>
    /// Every node's seed list: the Coordinator first, then the <see cref="SeedHosts"/>. A restarted Coordinator
    /// (the first seed) asks the other seeds before it forms a cluster of its own, so it rejoins the hosts
    /// instead of splitting from them; a restarted host seed rejoins through the others.
    /// </summary>
    public string Seed => string.Join(",", new[] { CoordinatorPort }.Concat(SeedHosts.Select(HostPort)).Select(p => $"akka.tcp://lsm@127.0.0.1:{p}"));
    public string ApiUrl => $"http://127.0.0.1:{HttpPort}";
    public string DomainRoot => Path.Combine(DataDirectory, "domains");
    public IReadOnlyList<NodeProcess> Nodes => _nodes;
    public string HostDataDirectory(string hostId) => Path.Combine(DataDirectory, hostId);
    public string HostRunDirectory(string hostId) => Path.Combine(HostDataDirectory(hostId), "run");

    /// <summary>
    /// Hosts that listen on a fixed port and act as seed nodes beside the Coordinator. With the Coordinator
    /// as the only seed, a Coordinator killed and restarted joins itself and forms a second cluster without
    /// the hosts; list the hosts here whenever a node may be restarted.
    /// </summary>
    public IReadOnlyList<string> SeedHosts { get; init; } = [];

    /// <summary>Extra HOCON passed to every node (tests use fast cluster timings).</summary>
    public string? ExtraHocon { get; init; }

    public NodeProcess StartCoordinator(string name = "coordinator") =>
        Start(name, "Coordinator", "LiveMigration.Coordinator.dll",
        [
            "--port", CoordinatorPort.ToString(), "--seed", Seed, "--http", ApiUrl,
            "--data-dir", Path.Combine(DataDirectory, name),
        ]);

    public NodeProcess StartHost(string hostId, bool spm) =>
        Start(hostId, "HostNode", "LiveMigration.HostNode.dll",
        [
            "--host-id", hostId, "--port", SeedHosts.Contains(hostId) ? HostPort(hostId).ToString() : "0", "--seed", Seed, "--roles", spm ? "host,spm" : "host",
            "--data-dir", HostDataDirectory(hostId), "--domain-root", DomainRoot,
        ]);

    /// <summary>The fixed port of a seed host, picked once so a restart listens where the seed list says.</summary>
    private int HostPort(string hostId)
    {
        lock (_hostPorts)
        {
            if (_hostPorts.TryGetValue(hostId, out var port)) return port;
            do port = FreePort();
            while (port == CoordinatorPort || port == HttpPort || _hostPorts.ContainsValue(port));
            return _hostPorts[hostId] = port;
        }
    }

    private NodeProcess Start(string name, string project, string dll, IReadOnlyList<string> arguments)
    {
        var path = Path.Combine(RepositoryRoot, "src", project, "bin", _binRoot, "net10.0", dll);
        if (!File.Exists(path))
            throw new FileNotFoundException($"{path} is not built; run ./run.sh demo, which builds it first");
        var log = Path.Combine(DataDirectory, "logs", $"{name}.log");
        Directory.CreateDirectory(Path.GetDirectoryName(log)!);
        // The node's output is copied into its log file as it comes, so the pipes never fill up.
        var psi = new ProcessStartInfo("dotnet")
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = DataDirectory,
        };
        psi.ArgumentList.Add(path);
        foreach (var a in arguments) psi.ArgumentList.Add(a);
        if (ExtraHocon is { } hocon) psi.Environment["LSM_Cluster__ExtraHocon"] = hocon;
        var process = Process.Start(psi) ?? throw new InvalidOperationException($"cannot start {name}");
        var writer = new StreamWriter(log, append: true) { AutoFlush = true };
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (writer) writer.WriteLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (writer) writer.WriteLine(e.Data); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        var node = new NodeProcess(name, process, log, arguments);
        _nodes.Add(node);
        return node;
    }

    /// <summary>SIGKILL, as a crash: no shutdown, no leave.</summary>
    public async Task KillAsync(NodeProcess node)
    {
        if (node.Running) node.Process.Kill(entireProcessTree: false);
        await node.Process.WaitForExitAsync();
        _nodes.Remove(node);
    }

    public async Task<NodeProcess> RestartAsync(NodeProcess node)
    {
        if (node.Running) await KillAsync(node);
        _nodes.Remove(node);
        var dll = node.Name.StartsWith("host") ? ("HostNode", "LiveMigration.HostNode.dll") : ("Coordinator", "LiveMigration.Coordinator.dll");
        // The first seed of a list forms a new cluster when no other seed answers within seed-node-timeout;
        // a node that comes back must rejoin the running one, so its own address goes last in its list.
        var listed = Seed.Split(',');
        var self = node.Name.StartsWith("host")
            ? SeedHosts.Contains(node.Name) ? $"akka.tcp://lsm@127.0.0.1:{HostPort(node.Name)}" : null
            : $"akka.tcp://lsm@127.0.0.1:{CoordinatorPort}";
        var seeds = self is null ? listed : listed.Where(s => s != self).Append(self);
        var arguments = node.Arguments.ToList();
        var at = arguments.IndexOf("--seed");
        if (at >= 0) arguments[at + 1] = string.Join(",", seeds);
        return Start(node.Name, dll.Item1, dll.Item2, arguments);
    }

    public async ValueTask DisposeAsync()
    {
        // Hosts first, the seed last, each by pid; SIGTERM runs their coordinated shutdown.
        foreach (var node in _nodes.AsEnumerable().Reverse().ToList())
        {
            if (!node.Running) continue;
            Posix.Terminate(node.Pid);
            using var grace = new CancellationTokenSource(TimeSpan.FromSeconds(10));
            try { await node.Process.WaitForExitAsync(grace.Token); }
            catch (OperationCanceledException) { node.Process.Kill(); await node.Process.WaitForExitAsync(); }
        }
        _nodes.Clear();
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        return ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
    }

    private static string FindRepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "LiveMigration.Akka.sln"))) return dir.FullName;
        throw new InvalidOperationException("cannot find LiveMigration.Akka.sln above " + AppContext.BaseDirectory);
    }

    private static class Posix
    {
        [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill", SetLastError = true)]
        private static extern int Kill(int pid, int signal);
        public static void Terminate(int pid) => Kill(pid, 15);
    }
}
