using System.Text.Json;
using LiveMigration.Cli.Local;

namespace LiveMigration.Cli.Tests.Hostile;

/// <summary>
/// One local cluster for the whole hostile-input class: two domains (sdA, sdB) under DATA/storage, one VM (vm1, one
/// disk with a snapshot on sdA) running on host-1, and a symlink inside the allowed storage root that points out of it.
/// The ids of what exists are here so generators can mix them in.
/// </summary>
public sealed class HostileCluster : IAsyncLifetime
{
    public LocalClusterSession Session { get; } = new();
    public string VmId { get; private set; } = "";
    public const string VmName = "vm1";
    public string ImageId { get; private set; } = "";
    public string DomainAId { get; private set; } = "";
    public string DomainBId { get; private set; } = "";
    public string JournalFile { get; private set; } = "";
    /// <summary>DATA/storage/escape: a symlink to DATA/escape-target, a folder out of every allowed root.</summary>
    public string EscapeLink => Path.Combine(Session.Storage, "escape");
    public string EscapeTarget => Path.Combine(Session.DataDirectory, "escape-target");

    public async Task InitializeAsync()
    {
        await Session.UpAsync();
        await Session.Ok("domain", "create", "sdA", "--path", Session.Storage, "--capacity", "512MiB");
        await Session.Ok("domain", "create", "sdB", "--path", Session.Storage, "--capacity", "512MiB");
        await Session.Ok("vm", "create", VmName, "--host", "host-1", "--disk", "64MiB@sdA:snapshots=1");
        Directory.CreateDirectory(EscapeTarget);
        Directory.CreateSymbolicLink(EscapeLink, EscapeTarget);

        var domains = (await Session.Json("domains")).GetProperty("domains").EnumerateArray().ToList();
        DomainAId = domains.Single(d => d.GetProperty("name").GetString() == "sdA").GetProperty("id").GetString()!;
        DomainBId = domains.Single(d => d.GetProperty("name").GetString() == "sdB").GetProperty("id").GetString()!;
        var vm = (await Session.Json("vm", "show", VmName)).Clone();
        VmId = vm.GetProperty("id").GetString()!;
        ImageId = vm.GetProperty("disks")[0].GetProperty("image").GetString()!;
        var state = (await LocalClusterState.ReadAsync(Session.DataDirectory))!;
        JournalFile = Path.Combine(state.Nodes.Single(n => n.Name == "coordinator").DataDirectory, "journal.db");
    }

    public async Task DisposeAsync() => await Session.DisposeAsync();
}
