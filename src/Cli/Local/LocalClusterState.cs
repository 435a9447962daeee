using System.Text.Json;
using System.Text.Json.Serialization;

namespace LiveMigration.Cli.Local;

/// <summary>One node as DATA/local.json records it.</summary>
public sealed record LocalNodeState(
    string Name,
    string Role,
    int Pid,
    long StartTime,
    int Port,
    string? Address,
    string LogFile,
    string DataDirectory)
{
    /// <summary>The address its cluster remoting listens on, when a test gave it one (null: loopback), kept for its restart.</summary>
    public string? Hostname { get; init; }

    /// <summary>The network namespace it runs in, when a test put it in one (null: this machine's own), kept for its restart.</summary>
    public string? NetworkNamespace { get; init; }

    /// <summary>A Coordinator's HTTP API (null for a host, and for the first Coordinator in a state file from before several Coordinators).</summary>
    public string? ApiUrl { get; init; }

    /// <summary>The port of <see cref="ApiUrl"/>, 0 without one.</summary>
    [JsonIgnore]
    public int ApiPort => ApiUrl is { } url && Uri.TryCreate(url, UriKind.Absolute, out var uri) ? uri.Port : 0;

    public NodeProcess AsProcess() => new(Name, Pid, StartTime, LogFile, ["--port", Port.ToString()]);

    [JsonIgnore]
    public bool Alive => ProcessTable.IsAlive(Pid, StartTime);
}

/// <summary>
/// DATA/local.json: what <c>lsm local up</c> started, so <c>lsm local status</c> and <c>lsm local down</c> (other
/// processes, later) find the nodes by pid. <see cref="Journal"/> never holds a password.
/// </summary>
public sealed record LocalClusterState(
    string DataDirectory,
    string ApiUrl,
    int ApiPort,
    string Journal,
    string DomainRoot,
    DateTimeOffset StartedAt,
    IReadOnlyList<LocalNodeState> Nodes)
{
    public const string FileName = "local.json";

    /// <summary>The hosts' hypervisor adapter, qmp or libvirt (a state file from before this field: qmp).</summary>
    public string Hypervisor { get; init; } = "qmp";

    /// <summary>The libvirt connection of libvirt hosts (null for qmp), where down finds their domains.</summary>
    public string? LibvirtUri { get; init; }

    /// <summary>With the sim hypervisor: how many hosts (host-1 …) its one process runs.</summary>
    public int SimHosts { get; init; }

    /// <summary>The hosts as cluster members: one per host process, or the sim process's host-1 … host-N.</summary>
    public IReadOnlyList<string> HostIds => Hypervisor == "sim"
        ? Enumerable.Range(1, SimHosts).Select(i => $"host-{i}").ToList()
        : Nodes.Where(n => n.Role.StartsWith("host")).Select(n => n.Name).ToList();

    /// <summary>The file (0600) holding the Coordinator's API token; null when it runs without one.</summary>
    public string? ApiTokenFile { get; init; }

    /// <summary>DATA/tls, the CA and node certificates of the cluster's mutual TLS; null: its nodes run plain remoting (a state file from before TLS).</summary>
    public string? TlsFolder { get; init; }

    /// <summary>The folders besides <see cref="DomainRoot"/> where the hosts allow storage domains (<c>--storage-root</c>).</summary>
    public IReadOnlyList<string> StorageRoots { get; init; } = [];

    private static readonly JsonSerializerOptions Options = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
    };

    public static string PathIn(string dataDirectory) => Path.Combine(Path.GetFullPath(dataDirectory), FileName);

    public IReadOnlyList<LocalNodeState> AliveNodes => Nodes.Where(n => n.Alive).ToList();

    public string ToJson() => JsonSerializer.Serialize(this, Options);

    /// <summary>Written to a temporary file and renamed over the old one, so a reader never sees half of it.</summary>
    public async Task WriteAsync(CancellationToken ct = default)
    {
        var path = PathIn(DataDirectory);
        var temporary = path + ".tmp";
        await File.WriteAllTextAsync(temporary, ToJson(), ct);
        File.Move(temporary, path, overwrite: true);
    }

    /// <summary>The state in that data directory, or null when nothing was started there.</summary>
    public static async Task<LocalClusterState?> ReadAsync(string dataDirectory, CancellationToken ct = default)
    {
        var path = PathIn(dataDirectory);
        if (!File.Exists(path)) return null;
        try
        {
            return JsonSerializer.Deserialize<LocalClusterState>(await File.ReadAllTextAsync(path, ct), Options)
                   ?? throw new JsonException("null");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path} is not a local cluster's state file ({e.Message}); move it away if nothing runs there", e);
        }
    }
}
