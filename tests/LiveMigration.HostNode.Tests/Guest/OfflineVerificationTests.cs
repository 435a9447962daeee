using LiveMigration.HostNode.Guest;
using LiveMigration.HostNode.Processes;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Guest;

/// <summary>Verifying a stopped VM's disk from its file reads the file in the format its metadata names, never a probed one.</summary>
public sealed class OfflineVerificationTests : IDisposable
{
    private readonly string _folder = Path.Combine(Path.GetTempPath(), $"lsm-offline-{Guid.NewGuid():N}");

    public OfflineVerificationTests() => Directory.CreateDirectory(_folder);

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    [Fact]
    public async Task A_raw_disk_whose_guest_wrote_a_qcow2_header_at_its_start_is_read_as_the_raw_disk_it_is()
    {
        var disk = Path.Combine(_folder, "disk.raw");
        var lure = Path.Combine(_folder, "lure.qcow2");
        await ProcessRunner.RunCheckedAsync("qemu-img", ["create", "-q", "-f", "raw", disk, "8M"], ErrorCodes.QemuImgFailed);
        await ProcessRunner.RunCheckedAsync("qemu-img", ["create", "-q", "-f", "qcow2", lure, "8M"], ErrorCodes.QemuImgFailed);
        var drive = ImageId.New();
        using var ledger = WriteLedger.InMemory(drive);
        var block = new byte[BlockStamp.DefaultBlockSize];
        var stamp = BlockStamp.Write(block, drive, 1 << 20, 1, DateTimeOffset.UtcNow);
        ledger.RecordSent(stamp);
        ledger.RecordAcknowledged(stamp, forceUnitAccess: true);
        await using (var file = new FileStream(disk, FileMode.Open, FileAccess.Write))
        {
            // What the guest wrote: an (empty) qcow2 image's header and tables at the disk's start, a stamped block at 1 MiB.
            // Probed, the file reads as that qcow2 image, whose clusters are all zero, and the block is "lost".
            file.Write(await File.ReadAllBytesAsync(lure));
            file.Position = 1 << 20;
            file.Write(block);
        }

        var report = await GuestVerifier.VerifyImageAsync(disk, VolumeFormat.Raw, ledger);

        Assert.True(report.Ok, report.ToString());
        Assert.Equal(1, report.BlocksChecked);
    }
}
