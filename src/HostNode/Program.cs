using Akka.Hosting;
using LiveMigration.HostNode.Hosting;
using LiveMigration.Shared.Hosting;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

// A HostNode: one per hypervisor machine. It joins the cluster, runs its VMs' block jobs (HSM),
// may hold the SPM singleton, and reports what it sees to the Coordinator's inventory.
var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { Args = [ConfigWatch.Off] });
builder.Configuration.AddJsonFile("appsettings.json", optional: true)
    .AddEnvironmentVariables("LSM_")
    .AddCommandLine(ClusterNodeSettings.ExpandFlags(args), HostNodeSettings.Switches.ToDictionary());

// Before anything is created: nothing this host or its QEMU writes is for other users (ProcessUmask says why).
LiveMigration.HostNode.Processes.ProcessUmask.Set(LiveMigration.HostNode.Processes.ProcessUmask.HostNodeMask);

HostNodeSettings settings;
HostNodeComponents components;
HostManagement management;
try
{
    settings = HostNodeSettings.From(builder.Configuration);
    if (settings.Hypervisor == "sim") return await SimHosts.RunAsync(builder.Configuration, settings);
    FaultPlan.Current = FaultPlan.FromEnvironment(settings.HostId, settings.DataDirectory);
    components = await settings.CreateComponentsAsync();
    // Domains created through the API under other folders than the configured roots.
    management = HostManagement.Under(settings.DataDirectory);
    await management.Roots.AttachRememberedAsync(components.Pool, skipped: root =>
        Console.Error.WriteLine($"HostNode: not attaching the domains under {root}, remembered from before: it is not under a storage root " +
                                $"this host allows now ({string.Join(", ", settings.StorageRoots.Roots)})"));
}
catch (Exception e) when (e is ArgumentException or FormatException or LiveMigration.Shared.Model.OperationFailedException)
{
    Console.Error.WriteLine($"HostNode: {e.Message}");
    Console.Error.WriteLine("usage: HostNode --host-id host-1 --port 4061 --seed akka.ssl.tcp://lsm@127.0.0.1:4053 --roles host,spm --data-dir var/host-1 --domain-root var/domains --allowed-storage-roots /srv/lsm --spm-lease var/domains/spm.lease [--spm-max-copies N] [--tls-certificate FILE [--tls-key FILE] --tls-ca FILE | --insecure-remoting]");
    return 2;
}

builder.Services.AddAkka(ClusterNodeSettings.SystemName, akka => akka
    .WithClusterNode(settings.Cluster)
    .WithHostNodeActors(components, settings.SpmCapable, management, settings.SpmLease, settings.SpmMaxCopies));

var app = builder.Build();
Console.WriteLine($"HostNode {settings.HostId}: {components.Pool.Domains.Count} storage domains, run directory {settings.RunDirectory}, roles {string.Join(",", settings.Cluster.Roles)}");
if (settings.Hypervisor == "qmp")
    Console.WriteLine(settings.QemuAccount is { } qemu
        ? $"HostNode {settings.HostId}: QEMU runs as {qemu.Name} (uid {qemu.Uid}, gid {qemu.Gid})"
        : $"HostNode {settings.HostId}: WARNING: QEMU runs as this host's own user{(Environment.UserName == "root" ? " (root)" : "")}; give --qemu-user {LiveMigration.HostNode.Processes.QemuAccount.DefaultName} to confine it");
await app.RunAsync();
// The VMs outlive this process on purpose; only the QMP connections close.
await components.Hypervisor.DisposeAsync();
return 0;
