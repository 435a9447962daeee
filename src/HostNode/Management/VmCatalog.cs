using System.Text.Json;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.HostNode.Management;

/// <summary>
/// A VM as its host keeps it between runs: its name, the leaf of each drive's chain, and the switches begun on a
/// drive whose outcome is not recorded yet (<see cref="Pending"/>: the leaf a pivot or live snapshot was moving it to).
/// </summary>
public sealed record CatalogedVm(VmId Id, string Name, IReadOnlyList<DiskLeaf> Drives, IReadOnlyList<DiskLeaf>? Pending = null)
{
    public IReadOnlyList<DiskLeaf> Switching => Pending ?? [];

    public DiskLeaf? LeafOf(ImageId image) => Drives.FirstOrDefault(d => d.Image == image);
    /// <summary>
    /// The switch begun on a drive and not recorded yet. A switch to the leaf the record already names leaves nothing in
    /// doubt (a late copy of a switch that took effect long ago): it is no pending switch, in records written before that rule too.
    /// </summary>
    public DiskLeaf? PendingOf(ImageId image) =>
        Switching.FirstOrDefault(d => d.Image == image) is { } pending && pending.Leaf != LeafOf(image)?.Leaf ? pending : null;

    public CatalogedVm WithLeaf(ImageId image, VolumeRef leaf) => this with
    {
        Drives = Drives.Any(d => d.Image == image)
            ? Drives.Select(d => d.Image == image ? d with { Leaf = leaf } : d).ToList()
            : Drives.Append(new DiskLeaf(image, leaf)).ToList(),
        Pending = Switching.Where(p => p.Image != image).ToList(),
    };

    /// <summary>Records a switch begun; none when the record names its target already (nothing a probe would have to decide).</summary>
    public CatalogedVm WithPending(ImageId image, VolumeRef target) => LeafOf(image)?.Leaf == target
        ? WithoutPending(image)
        : this with { Pending = Switching.Where(p => p.Image != image).Append(new DiskLeaf(image, target)).ToList() };

    public CatalogedVm WithoutPending(ImageId image) => this with { Pending = Switching.Where(p => p.Image != image).ToList() };
}

/// <summary>A drive's switch of one migration that a probe answered did not take effect: a late copy of it is refused.</summary>
public sealed record FencedSwitch(ImageId Image, MigrationId Migration);

/// <summary>
/// The host's durable VM records (DESIGN §7.1), one JSON file each under <c>&lt;data dir&gt;/vms</c>, so a stopped VM
/// stays listed and starts again on its chains (the hypervisor forgets a VM once it stopped). A drive's leaf is
/// recorded when the VM is created, snapshotted or stopped, and by every step that switches a drive (pivot, live
/// snapshot, backing switch) before that step answers. Every write is durable: temporary file, fsync, rename,
/// fsync of the folder. The records are read from the folder once and then kept in memory beside it (this catalog is
/// the only writer of its folder): a host reports its VMs after every step, and reading thousands of files each time
/// was what a host with thousands of VMs spent its time on.
/// </summary>
public sealed class VmCatalog(string dataDirectory)
{
    private sealed record DriveEntry(string Image, string Domain, string Volume);
    private sealed record FenceEntry(string Image, string Migration);
    private sealed record Entry(string Id, string Name, List<DriveEntry> Drives, List<DriveEntry>? Pending = null);

    private static readonly JsonSerializerOptions Options = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.CamelCase };
    private readonly object _gate = new();

    public string Directory { get; } = Path.Combine(dataDirectory, "vms");

    // every record of the folder by the id its file is named by, once read; a file that could not be read keeps its
    // error, so it fails the calls that need it (as reading it each time did) and no others
    private Dictionary<VmId, CatalogedVm>? _records;
    private Dictionary<VmId, OperationFailedException>? _unreadable;

    private string PathOf(VmId id) => Path.Combine(Directory, $"{id}.json");

    public CatalogedVm? Find(VmId id)
    {
        lock (_gate)
        {
            LoadLocked();
            if (_unreadable!.TryGetValue(id, out var error)) throw error;
            return _records!.GetValueOrDefault(id);
        }
    }

    public IReadOnlyList<CatalogedVm> All()
    {
        lock (_gate)
        {
            LoadLocked();
            if (_unreadable!.Count > 0) throw _unreadable.Values.First();
            return _records!.Values.OrderBy(v => v.Name, StringComparer.Ordinal).ToList();
        }
    }

    private void LoadLocked()
    {
        if (_records is not null) return;
        var records = new Dictionary<VmId, CatalogedVm>();
        var unreadable = new Dictionary<VmId, OperationFailedException>();
        if (System.IO.Directory.Exists(Directory))
            foreach (var path in System.IO.Directory.EnumerateFiles(Directory, "*.json"))
            {
                if (!UuidText.TryParse(Path.GetFileNameWithoutExtension(path), out var uuid)) continue;
                try
                {
                    if (Read(path) is { } vm) records[new VmId(uuid)] = vm;
                }
                catch (OperationFailedException e)
                {
                    unreadable[new VmId(uuid)] = e;
                }
            }
        (_records, _unreadable) = (records, unreadable);
    }

    /// <summary>Writes the VM's entry durably (a temporary file fsynced and renamed over it, then the folder fsynced).</summary>
    public void Save(CatalogedVm vm)
    {
        static DriveEntry EntryOf(DiskLeaf d) => new(d.Image.ToString(), d.Leaf.Domain.ToString(), d.Leaf.Volume.ToString());
        var entry = new Entry(vm.Id.ToString(), vm.Name, vm.Drives.Select(EntryOf).ToList(),
            vm.Switching.Count == 0 ? null : vm.Switching.Select(EntryOf).ToList());
        lock (_gate)
        {
            System.IO.Directory.CreateDirectory(Directory);
            var path = PathOf(vm.Id);
            var temporary = path + ".tmp";
            using (var file = new FileStream(temporary, FileMode.Create, FileAccess.Write))
            {
                JsonSerializer.Serialize(file, entry, Options);
                file.Flush(flushToDisk: true);
            }
            File.Move(temporary, path, overwrite: true);
            Posix.FsyncDirectory(Directory);
            if (_records is not null)
            {
                _records[vm.Id] = vm;
                _unreadable!.Remove(vm.Id);
            }
        }
    }

    /// <summary>
    /// Changes one VM's record under the catalog's lock; <paramref name="absent"/> makes the record of a VM it does not hold
    /// yet. A change that returns the record it was given writes nothing.
    /// </summary>
    public CatalogedVm Update(VmId id, Func<CatalogedVm> absent, Func<CatalogedVm, CatalogedVm> change)
    {
        lock (_gate)
        {
            var current = Find(id);
            var updated = change(current ?? absent());
            if (current is null || !ReferenceEquals(updated, current)) Save(updated);
            return updated;
        }
    }

    /// <summary>How many fenced switches a VM keeps (the newest): each is needed only until its migration's rollback ends.</summary>
    public const int MaxFenced = 256;
    private readonly Dictionary<VmId, List<FencedSwitch>> _fences = new();

    /// <summary>
    /// The switches of a VM's drives that a probe answered never took effect: <c>&lt;id&gt;.fences</c> beside its record, a
    /// file of its own, so no rewrite of the record (a stop, a reconcile) drops one, and a fence needs no record (a VM
    /// whose chains cannot all be placed has none).
    /// </summary>
    private string FencesPathOf(VmId id) => Path.Combine(Directory, $"{id}.fences");

    public bool IsFenced(VmId vm, ImageId image, MigrationId migration)
    {
        lock (_gate) return FencesLocked(vm).Contains(new FencedSwitch(image, migration));
    }

    /// <summary>Adds a fence durably (a temporary file fsynced and renamed over the VM's fences, the folder fsynced).</summary>
    public void Fence(VmId vm, ImageId image, MigrationId migration)
    {
        lock (_gate)
        {
            var fences = FencesLocked(vm);
            var fence = new FencedSwitch(image, migration);
            if (fences.Contains(fence)) return;
            var kept = fences.Append(fence).TakeLast(MaxFenced).ToList();
            System.IO.Directory.CreateDirectory(Directory);
            var path = FencesPathOf(vm);
            var temporary = path + ".tmp";
            using (var file = new FileStream(temporary, FileMode.Create, FileAccess.Write))
            {
                JsonSerializer.Serialize(file, kept.Select(f => new FenceEntry(f.Image.ToString(), f.Migration.ToString())).ToList(), Options);
                file.Flush(flushToDisk: true);
            }
            File.Move(temporary, path, overwrite: true);
            Posix.FsyncDirectory(Directory);
            _fences[vm] = kept;
        }
    }

    private List<FencedSwitch> FencesLocked(VmId vm)
    {
        if (_fences.TryGetValue(vm, out var known)) return known;
        var path = FencesPathOf(vm);
        var fences = new List<FencedSwitch>();
        if (File.Exists(path))
        {
            try
            {
                foreach (var entry in JsonSerializer.Deserialize<List<FenceEntry>>(File.ReadAllText(path), Options) ?? [])
                    fences.Add(new FencedSwitch(ImageId.Parse(entry.Image), MigrationId.Parse(entry.Migration)));
            }
            catch (Exception e) when (e is JsonException or OperationFailedException)
            {
                // unreadable: every switch of the VM is refused by the caller's error until someone looks
                throw new OperationFailedException(ErrorCodes.IoError, $"the fenced switches {path} cannot be read: {e.Message}", e);
            }
        }
        _fences[vm] = fences;
        return fences;
    }

    /// <summary>Forgets a VM (one whose creation failed); nothing when it is not there.</summary>
    public void Remove(VmId id)
    {
        lock (_gate)
        {
            File.Delete(PathOf(id));
            File.Delete(FencesPathOf(id));
            _fences.Remove(id);
            if (System.IO.Directory.Exists(Directory)) Posix.FsyncDirectory(Directory);
            _records?.Remove(id);
            _unreadable?.Remove(id);
        }
    }

    private static CatalogedVm? Read(string path)
    {
        if (!File.Exists(path)) return null;
        try
        {
            var entry = JsonSerializer.Deserialize<Entry>(File.ReadAllText(path), Options);
            if (entry is null) return null;
            static DiskLeaf LeafOf(DriveEntry d) => new(ImageId.Parse(d.Image), new VolumeRef(DomainId.Parse(d.Domain), VolumeId.Parse(d.Volume)));
            return new CatalogedVm(VmId.Parse(entry.Id), entry.Name, entry.Drives.Select(LeafOf).ToList(),
                entry.Pending?.Select(LeafOf).ToList());
        }
        catch (Exception e) when (e is JsonException or OperationFailedException)
        {
            throw new OperationFailedException(ErrorCodes.IoError, $"the VM catalog entry {path} cannot be read: {e.Message}", e);
        }
    }
}
