using System.Text.Json;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.HostNode.Management;

/// <summary>A VM as its host keeps it between runs: its name and the leaf of each drive's chain.</summary>
public sealed record CatalogedVm(VmId Id, string Name, IReadOnlyList<DiskLeaf> Drives);

/// <summary>
/// The VMs this host owns, one JSON file each under <c>&lt;data dir&gt;/vms</c>, so a stopped VM stays listed
/// and starts again on its chains (the hypervisor forgets a VM once it stopped). A drive's leaf is recorded when
/// the VM is created, snapshotted and stopped; while it runs, the hypervisor's open chain is the truth.
/// </summary>
public sealed class VmCatalog(string dataDirectory)
{
    private sealed record DriveEntry(string Image, string Domain, string Volume);
    private sealed record Entry(string Id, string Name, List<DriveEntry> Drives);

    private static readonly JsonSerializerOptions Options = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.CamelCase };
    private readonly object _gate = new();

    public string Directory { get; } = Path.Combine(dataDirectory, "vms");

    private string PathOf(VmId id) => Path.Combine(Directory, $"{id}.json");

    public CatalogedVm? Find(VmId id)
    {
        lock (_gate) return Read(PathOf(id));
    }

    public IReadOnlyList<CatalogedVm> All()
    {
        lock (_gate)
        {
            if (!System.IO.Directory.Exists(Directory)) return [];
            return System.IO.Directory.EnumerateFiles(Directory, "*.json")
                .Where(p => UuidText.TryParse(Path.GetFileNameWithoutExtension(p), out _))
                .Select(Read).OfType<CatalogedVm>()
                .OrderBy(v => v.Name, StringComparer.Ordinal)
                .ToList();
        }
    }

    /// <summary>Writes the VM's entry atomically (a temporary file renamed over it).</summary>
    public void Save(CatalogedVm vm)
    {
        var entry = new Entry(vm.Id.ToString(), vm.Name,
            vm.Drives.Select(d => new DriveEntry(d.Image.ToString(), d.Leaf.Domain.ToString(), d.Leaf.Volume.ToString())).ToList());
        lock (_gate)
        {
            System.IO.Directory.CreateDirectory(Directory);
            var path = PathOf(vm.Id);
            var temporary = path + ".tmp";
            File.WriteAllText(temporary, JsonSerializer.Serialize(entry, Options));
            File.Move(temporary, path, overwrite: true);
        }
    }

    /// <summary>Forgets a VM (one whose creation failed); nothing when it is not there.</summary>
    public void Remove(VmId id)
    {
        lock (_gate) File.Delete(PathOf(id));
    }

    private static CatalogedVm? Read(string path)
    {
        if (!File.Exists(path)) return null;
        try
        {
            var entry = JsonSerializer.Deserialize<Entry>(File.ReadAllText(path), Options);
            if (entry is null) return null;
            return new CatalogedVm(VmId.Parse(entry.Id), entry.Name,
                entry.Drives.Select(d => new DiskLeaf(ImageId.Parse(d.Image), new VolumeRef(DomainId.Parse(d.Domain), VolumeId.Parse(d.Volume)))).ToList());
        }
        catch (Exception e) when (e is JsonException or OperationFailedException)
        {
            throw new OperationFailedException(ErrorCodes.IoError, $"the VM catalog entry {path} cannot be read: {e.Message}", e);
        }
    }
}
