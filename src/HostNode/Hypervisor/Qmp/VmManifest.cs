using System.Text.Json;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Hypervisor.Qmp;

/// <summary>One layer as written in a manifest (plain strings: this is a file format, not a wire type).</summary>
internal sealed record LayerManifest(string Domain, string Volume, string Path, string Format)
{
    public static LayerManifest From(ChainLayer layer) =>
        new(layer.Volume.Domain.ToString(), layer.Volume.Volume.ToString(), layer.Path, layer.Format.ToString());

    public ChainLayer ToLayer() =>
        new(new VolumeRef(DomainId.Parse(Domain), VolumeId.Parse(Volume)), Path, Enum.Parse<VolumeFormat>(Format));
}

/// <summary>
/// A drive: the chain we opened (base → leaf), and the destination leaf of a mirror in flight with its copy mode
/// (QEMU 7.2 does not report it; null in manifests older than it).
/// </summary>
internal sealed record DriveManifest(string Image, string ExportName, IReadOnlyList<LayerManifest> Layers, LayerManifest? MirrorTarget,
    CopyMode? MirrorMode = null)
{
    public ImageId ImageId => ImageId.Parse(Image);
    public IReadOnlyList<ChainLayer> Chain => Layers.Select(l => l.ToLayer()).ToList();
}

/// <summary>What a restarted host needs to find and re-attach to a VM it started.</summary>
internal sealed record VmManifest(
    string VmId, string Name, int Pid, string QmpSocket, string NbdSocket, string LogFile, IReadOnlyList<DriveManifest> Drives)
{
    private static readonly JsonSerializerOptions JsonOptions = new() { WriteIndented = true };

    public DriveManifest Drive(ImageId image) =>
        Drives.FirstOrDefault(d => d.ImageId == image)
        ?? throw new OperationFailedException(ErrorCodes.ImageNotFound, $"VM {VmId} has no drive for image {image}");

    public VmManifest WithDrive(DriveManifest drive) =>
        this with { Drives = Drives.Select(d => d.Image == drive.Image ? drive : d).ToList() };

    /// <summary>Writes atomically (temp file, fsync, rename) so a crash never leaves half a manifest.</summary>
    public async Task SaveAsync(string path, CancellationToken ct)
    {
        var temp = path + ".tmp";
        await using (var stream = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None))
        {
            await JsonSerializer.SerializeAsync(stream, this, JsonOptions, ct);
            await stream.FlushAsync(ct);
            stream.Flush(flushToDisk: true);
        }
        File.Move(temp, path, overwrite: true);
    }

    public static async Task<VmManifest?> LoadAsync(string path, CancellationToken ct)
    {
        try
        {
            await using var stream = File.OpenRead(path);
            return await JsonSerializer.DeserializeAsync<VmManifest>(stream, JsonOptions, ct);
        }
        catch (FileNotFoundException) { return null; }
        catch (DirectoryNotFoundException) { return null; }
        catch (JsonException) { return null; }
    }
}
